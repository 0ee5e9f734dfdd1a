// Package storetest gives tests a database of their own on the PostgreSQL
// server named by DEVPILOT_TEST_POSTGRES (which `make test` sets, after
// starting a throwaway server with scripts/with-postgres.sh).
package storetest

import (
	"context"
	"crypto/rand"
	"database/sql"
	"encoding/hex"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	_ "github.com/jackc/pgx/v5/stdlib" // the "pgx" driver

	"github.com/devpilot/devpilot/controlplane/store"
)

// EnvVar names the server tests may create and drop databases on: a
// postgres:// URL of a role with CREATEDB.
const EnvVar = "DEVPILOT_TEST_POSTGRES"

// PostgresURL creates an empty database for t and returns its URL; the
// database is dropped when t ends. Without EnvVar the test fails: a test
// that needs PostgreSQL never passes by not running.
func PostgresURL(t testing.TB) string {
	t.Helper()
	admin := os.Getenv(EnvVar)
	if admin == "" {
		t.Fatalf("%s is not set: this test needs a PostgreSQL server. Run it through `make test` "+
			"(which starts a throwaway one from Debian's postgresql package), or set %s to a postgres:// URL "+
			"of a role that may create databases", EnvVar, EnvVar)
	}
	u, err := url.Parse(admin)
	if err != nil {
		t.Fatalf("%s: %v", EnvVar, err)
	}
	b := make([]byte, 6)
	_, _ = rand.Read(b)
	name := "devpilot_test_" + hex.EncodeToString(b)
	db, err := sql.Open("pgx", admin)
	if err != nil {
		t.Fatalf("%s: %v", EnvVar, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if _, err := db.ExecContext(ctx, `CREATE DATABASE `+name); err != nil {
		_ = db.Close()
		t.Fatalf("create test database on %s: %v", u.Redacted(), err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if _, err := db.ExecContext(ctx, `DROP DATABASE IF EXISTS `+name+` WITH (FORCE)`); err != nil {
			t.Errorf("drop test database %s: %v", name, err)
		}
		_ = db.Close()
	})
	u.Path = "/" + name
	return u.String()
}

// DatabaseEnvVar chooses the database the control-plane suites run on:
// unset or "sqlite" for SQLite in the test's data dir, "postgres" for a
// fresh database on DEVPILOT_TEST_POSTGRES. `make test` runs them on both.
const DatabaseEnvVar = "DEVPILOT_TEST_DATABASE"

// Database returns the app.Config.Database value for t: "" (SQLite) or the
// URL of a fresh PostgreSQL database, as DatabaseEnvVar says.
func Database(t testing.TB) string {
	t.Helper()
	switch v := os.Getenv(DatabaseEnvVar); v {
	case "", "sqlite":
		return ""
	case "postgres":
		return PostgresURL(t)
	default:
		t.Fatalf("%s=%q: want sqlite or postgres", DatabaseEnvVar, v)
		return ""
	}
}

// ReplicasEnvVar runs each test's control plane as that many `serve
// --mode active` on one PostgreSQL database behind a TCP balancer, in the
// suites whose harness can (make test-postgres-active).
const ReplicasEnvVar = "DEVPILOT_TEST_REPLICAS"

// Replicas is ReplicasEnvVar's number of control planes (1 when unset);
// more than one needs DatabaseEnvVar=postgres.
func Replicas(t testing.TB) int {
	t.Helper()
	v := os.Getenv(ReplicasEnvVar)
	if v == "" {
		return 1
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 {
		t.Fatalf("%s=%q: want a number of control planes, 1 or more", ReplicasEnvVar, v)
	}
	if n > 1 && os.Getenv(DatabaseEnvVar) != "postgres" {
		t.Fatalf("%s=%d needs %s=postgres: several active control planes share a PostgreSQL database", ReplicasEnvVar, n, DatabaseEnvVar)
	}
	return n
}

// Contents returns everything st holds, for tests that prove a secret is
// stored nowhere in plaintext. SQLite: the database file's bytes, after
// the write-ahead log is folded into it. PostgreSQL: every row of every
// table as text, byte columns with their printable bytes as they are.
func Contents(t testing.TB, st *store.Store) string {
	t.Helper()
	db := st.DB()
	if st.Dialect() == store.SQLite {
		if _, err := db.Exec(`PRAGMA wal_checkpoint(TRUNCATE)`); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(st.Path())
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	rows, err := db.Query(`SELECT table_name, column_name, data_type FROM information_schema.columns
		WHERE table_schema = 'public' ORDER BY table_name, ordinal_position`)
	if err != nil {
		t.Fatal(err)
	}
	cols := map[string][]string{}
	var tables []string
	for rows.Next() {
		var table, col, typ string
		if err := rows.Scan(&table, &col, &typ); err != nil {
			t.Fatal(err)
		}
		if _, ok := cols[table]; !ok {
			tables = append(tables, table)
		}
		expr := fmt.Sprintf("%q::text", col)
		if typ == "bytea" {
			expr = fmt.Sprintf("encode(%q, 'escape')", col)
		}
		cols[table] = append(cols[table], "coalesce("+expr+", '')")
	}
	if err := rows.Close(); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for _, table := range tables {
		var text sql.NullString
		q := fmt.Sprintf(`SELECT string_agg(concat_ws(E'\t', %s), E'\n') FROM %q`, strings.Join(cols[table], ", "), table)
		if err := db.QueryRow(q).Scan(&text); err != nil {
			t.Fatalf("%s: %v", table, err)
		}
		fmt.Fprintf(&b, "-- %s\n%s\n", table, text.String)
	}
	return b.String()
}
