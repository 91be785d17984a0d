// Package wellknown holds the names every Capstan component agrees on:
// namespaces, lease names, condition types, phases, taint keys and the
// request metadata of fenced writes. Constants only.
package wellknown

// Namespaces.
const (
	// SystemNamespace holds the leases of lease-gated components.
	SystemNamespace = "capstan-system"
	// NodeLeaseNamespace holds one lease per node, renewed by its agent.
	NodeLeaseNamespace = "capstan-node-lease"
)

// Lease names of the lease-gated components (in SystemNamespace).
const (
	ControllerManagerLease = "controller-manager"
	SchedulerLease         = "scheduler"
)

// Request metadata of a fenced write: the lease a lease-gated caller holds
// and the epoch it holds it at. The API server checks them in the same etcd
// transaction as the write.
const (
	// MetadataLease is "<namespace>/<name>", or "<name>" in SystemNamespace.
	MetadataLease = "capstan-lease"
	// MetadataLeaseEpoch is the decimal epoch.
	MetadataLeaseEpoch = "capstan-lease-epoch"
)

// Request metadata that makes a write exact (ADR 0012).
const (
	// MetadataRequestID names one call of a mutating method, the same on
	// every retry of it: the API server records it in the write's own etcd
	// transaction, and answers a repeat with the recorded outcome instead
	// of writing again. 1 to 64 characters of [A-Za-z0-9._-].
	MetadataRequestID = "capstan-request-id"
	// MetadataDeadline is the absolute deadline of the attempt, in decimal
	// Unix nanoseconds: the API server does nothing for a call whose
	// deadline has passed, however late it reads it.
	MetadataDeadline = "capstan-deadline"
)

// Condition statuses.
const (
	ConditionTrue    = "True"
	ConditionFalse   = "False"
	ConditionUnknown = "Unknown"
)

// Condition types.
const (
	// NodeReady: the node agent is alive and can run pods.
	NodeReady = "Ready"
	// PodScheduled: the pod is bound to a node.
	PodScheduled = "PodScheduled"
	// PodReady: every container is ready.
	PodReady = "Ready"
	// ContainersReady: every container passes its readiness probe.
	ContainersReady = "ContainersReady"
	// DeploymentAvailable: at least replicas - maxUnavailable pods are available.
	DeploymentAvailable = "Available"
	// DeploymentProgressing: the rollout is moving (or done).
	DeploymentProgressing = "Progressing"
	// ReplicaSetReplicaFailure: pods could not be created or deleted.
	ReplicaSetReplicaFailure = "ReplicaFailure"
)

// Pod phases.
const (
	PodPending   = "Pending"
	PodRunning   = "Running"
	PodSucceeded = "Succeeded"
	PodFailed    = "Failed"
	PodUnknown   = "Unknown"
)

// Restart policies.
const (
	RestartAlways    = "Always"
	RestartOnFailure = "OnFailure"
	RestartNever     = "Never"
)

// Taint effects.
const (
	TaintNoSchedule       = "NoSchedule"
	TaintPreferNoSchedule = "PreferNoSchedule"
	TaintNoExecute        = "NoExecute"
)

// Taints the node lifecycle controller puts on nodes.
const (
	// TaintNodeUnreachable: the node's lease expired (Ready=Unknown).
	TaintNodeUnreachable = "node.capstan.dev/unreachable"
	// TaintNodeNotReady: the node reports Ready=False.
	TaintNodeNotReady = "node.capstan.dev/not-ready"
)

// Deployment strategies.
const (
	StrategyRollingUpdate = "RollingUpdate"
	StrategyRecreate      = "Recreate"
)

// Labels and annotations.
const (
	// LabelPodTemplateHash ties a Deployment's ReplicaSet and its pods to
	// one pod template.
	LabelPodTemplateHash = "pod-template-hash"
	// AnnotationRevision is a Deployment ReplicaSet's rollout revision.
	AnnotationRevision = "deployment.capstan.dev/revision"
	// LabelHostname is the node's name, on every Node.
	LabelHostname = "capstan.dev/hostname"
)

// Event types.
const (
	EventNormal  = "Normal"
	EventWarning = "Warning"
)
