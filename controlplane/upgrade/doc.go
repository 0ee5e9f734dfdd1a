// Package upgrade holds the upgrade test (upgrade_test.go): the control
// plane of an earlier commit, BaseCommit, provisions a server and runs a
// task; then the current binary starts on the same data dir and database,
// migrates it, and serves everything the old one left, to the old agent.
// The package has no code of its own.
package upgrade
