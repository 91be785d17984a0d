package chaos

import (
	"math"
	"testing"

	"github.com/anishathalye/porcupine"
	"go.uber.org/goleak"
)

func op(client int, call, ret int64, in regInput, out regOutput) porcupine.Operation {
	return porcupine.Operation{ClientId: client, Input: in, Call: call, Output: out, Return: ret}
}

// The register model accepts what a linearizable store may answer and
// refuses a lost acknowledged write, a stale read, and a conditional update
// applied against the wrong version; an unknown outcome may or may not
// have happened.
func TestRegisterModel(t *testing.T) {
	ok := regOutput{Outcome: outcomeOK}
	got := func(v string) regOutput { return regOutput{Outcome: outcomeOK, Found: true, Value: v} }
	none := regOutput{Outcome: outcomeOK}
	unknown := regOutput{Outcome: outcomeUnknown}
	for _, tc := range []struct {
		name string
		ops  []porcupine.Operation
		want porcupine.CheckResult
	}{
		{"create then read", []porcupine.Operation{
			op(0, 0, 10, regInput{Key: "k", Op: regCreate, Value: "a"}, ok),
			op(1, 20, 30, regInput{Key: "k", Op: regGet}, got("a")),
		}, porcupine.Ok},
		{"acknowledged create lost", []porcupine.Operation{
			op(0, 0, 10, regInput{Key: "k", Op: regCreate, Value: "a"}, ok),
			op(1, 20, 30, regInput{Key: "k", Op: regGet}, none),
		}, porcupine.Illegal},
		{"stale read after an update", []porcupine.Operation{
			op(0, 0, 10, regInput{Key: "k", Op: regCreate, Value: "a"}, ok),
			op(0, 20, 30, regInput{Key: "k", Op: regUpdate, Value: "b", Expect: "a"}, ok),
			op(1, 40, 50, regInput{Key: "k", Op: regGet}, got("a")),
		}, porcupine.Illegal},
		{"update against a changed version applied", []porcupine.Operation{
			op(0, 0, 10, regInput{Key: "k", Op: regCreate, Value: "a"}, ok),
			op(0, 20, 30, regInput{Key: "k", Op: regUpdate, Value: "b", Expect: "a"}, ok),
			op(1, 40, 50, regInput{Key: "k", Op: regUpdate, Value: "c", Expect: "a"}, ok),
		}, porcupine.Illegal},
		{"conflict on a changed version", []porcupine.Operation{
			op(0, 0, 10, regInput{Key: "k", Op: regCreate, Value: "a"}, ok),
			op(0, 20, 30, regInput{Key: "k", Op: regUpdate, Value: "b", Expect: "a"}, ok),
			op(1, 40, 50, regInput{Key: "k", Op: regUpdate, Value: "c", Expect: "a"}, regOutput{Outcome: outcomeConflict}),
		}, porcupine.Ok},
		{"unknown write that happened", []porcupine.Operation{
			op(0, 0, math.MaxInt64, regInput{Key: "k", Op: regCreate, Value: "a"}, unknown),
			op(1, 20, 30, regInput{Key: "k", Op: regGet}, got("a")),
		}, porcupine.Ok},
		{"unknown write that did not", []porcupine.Operation{
			op(0, 0, math.MaxInt64, regInput{Key: "k", Op: regCreate, Value: "a"}, unknown),
			op(1, 20, 30, regInput{Key: "k", Op: regGet}, none),
		}, porcupine.Ok},
		{"delete, then exists", []porcupine.Operation{
			op(0, 0, 10, regInput{Key: "k", Op: regCreate, Value: "a"}, ok),
			op(0, 20, 30, regInput{Key: "k", Op: regDelete}, ok),
			op(1, 40, 50, regInput{Key: "k", Op: regCreate, Value: "b"}, regOutput{Outcome: outcomeExists}),
		}, porcupine.Illegal},
		{"keys apart", []porcupine.Operation{
			op(0, 0, 10, regInput{Key: "k", Op: regCreate, Value: "a"}, ok),
			op(1, 20, 30, regInput{Key: "j", Op: regGet}, none),
		}, porcupine.Ok},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if res := porcupine.CheckOperationsTimeout(registerModel, tc.ops, 0); res != tc.want {
				t.Fatalf("check: %v, want %v", res, tc.want)
			}
		})
	}
}

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
