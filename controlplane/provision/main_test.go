package provision

import (
	"testing"

	"go.uber.org/goleak"
)

// Lifecycle jobs and their lease renewals are goroutines: none may outlive
// a test.
func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }
