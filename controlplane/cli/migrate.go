package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"text/tabwriter"

	"github.com/devpilot/devpilot/controlplane/app"
	"github.com/devpilot/devpilot/controlplane/problem"
	"github.com/devpilot/devpilot/controlplane/store"
)

// runMigrate is `devpilot migrate status`: the database's schema version
// and the migrations this binary would apply. It changes nothing
// (devpilot serve applies pending migrations when it starts).
//
// It uses only newFlags, parse, usagef and passwordInArgs, which the CLI
// keeps for plain-function commands (so it attaches unchanged after the
// move to cobra).
func runMigrate(ctx context.Context, env Env, args []string) error {
	if len(args) > 0 && (args[0] == "-h" || args[0] == "--help" || args[0] == "help") {
		fmt.Fprintln(env.Stderr, "usage: devpilot migrate status [--data-dir D] [--database URL] [--json]")
		return nil
	}
	if len(args) == 0 || args[0] != "status" {
		return usagef("migrate takes a verb: status (devpilot migrate status --data-dir D)")
	}
	return migrateStatus(ctx, env, args[1:])
}

func migrateStatus(ctx context.Context, env Env, args []string) error {
	fs := newFlags("migrate status", env)
	dataDir := fs.String("data-dir", "devpilot-data", "the data directory of devpilot serve")
	database := fs.String("database", "", "the --database of devpilot serve (empty: SQLite in the data dir; a password goes in DEVPILOT_DATABASE)")
	asJSON := fs.Bool("json", false, "print JSON")
	if pos, err := parse(fs, env, args); err != nil {
		return err
	} else if len(pos) > 0 {
		return usagef("migrate status takes no arguments")
	}
	if err := passwordInArgs(fs, "database"); err != nil {
		return err
	}
	dbPath := filepath.Join(*dataDir, app.DBFile)
	if !store.IsPostgresURL(*database) {
		if _, err := os.Stat(dbPath); err != nil {
			return problem.Validation("give the --data-dir of devpilot serve (or its --database)", "no control plane database at %s", dbPath)
		}
	}
	st, err := store.OpenAsIs(ctx, *database, dbPath)
	if err != nil {
		return err
	}
	defer func() { _ = st.Close() }()
	current, all, err := st.MigrationStatus(ctx)
	if err != nil {
		return err
	}
	pending := 0
	for _, m := range all {
		if !m.Applied {
			pending++
		}
	}
	if *asJSON {
		type mig struct {
			Version   int64  `json:"version"`
			Source    string `json:"source"`
			Applied   bool   `json:"applied"`
			AppliedAt string `json:"applied_at,omitempty"`
		}
		out := struct {
			Database      string `json:"database"`
			SchemaVersion int64  `json:"schema_version"`
			Pending       int    `json:"pending"`
			Migrations    []mig  `json:"migrations"`
		}{Database: string(st.Dialect()), SchemaVersion: current, Pending: pending, Migrations: []mig{}}
		for _, m := range all {
			v := mig{Version: m.Version, Source: m.Source, Applied: m.Applied}
			if m.Applied && !m.AppliedAt.IsZero() {
				v.AppliedAt = m.AppliedAt.UTC().Format("2006-01-02T15:04:05Z")
			}
			out.Migrations = append(out.Migrations, v)
		}
		enc := json.NewEncoder(env.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	fmt.Fprintf(env.Stdout, "Database %s (%s): schema version %d; %d of %d migrations pending.\n", st.Path(), st.Dialect(), current, pending, len(all))
	tw := tabwriter.NewWriter(env.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "VERSION\tMIGRATION\tSTATE")
	for _, m := range all {
		state := "pending"
		if m.Applied {
			state = "applied"
			if !m.AppliedAt.IsZero() {
				state += " " + m.AppliedAt.UTC().Format("2006-01-02 15:04:05Z")
			}
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\n", strconv.FormatInt(m.Version, 10), filepath.Base(m.Source), state)
	}
	_ = tw.Flush()
	if pending > 0 {
		fmt.Fprintln(env.Stdout, "devpilot serve applies the pending migrations when it starts; take a devpilot backup first.")
	}
	return nil
}
