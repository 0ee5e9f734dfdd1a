// Command devpilot-agent runs on a managed server: it installs itself as a
// systemd service and keeps a WebSocket session with the control plane.
// This version only reports its version; the provisioning work adds
// `install`, `run`, `uninstall` and `status`.
package main

import (
	"fmt"
	"os"

	"github.com/devpilot/devpilot/shared/version"
)

func main() {
	if len(os.Args) == 2 && (os.Args[1] == "version" || os.Args[1] == "--version") {
		fmt.Println("devpilot-agent", version.String())
		return
	}
	fmt.Fprintln(os.Stderr, "usage: devpilot-agent version")
	os.Exit(2)
}
