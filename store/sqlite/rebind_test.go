package sqlite

import "testing"

func TestRebind(t *testing.T) {
	cases := []struct{ name, in, want string }{
		{"no parameters", "SELECT 1", "SELECT 1"},
		{"sequential become anonymous", "INSERT INTO t VALUES ($1, $2), ($3, $4)", "INSERT INTO t VALUES (?, ?), (?, ?)"},
		{"two digits", "VALUES ($9, $10, $11)", "VALUES (?9, ?10, ?11)"},
		{"two digits in order", "($1,$2,$3,$4,$5,$6,$7,$8,$9,$10)", "(?,?,?,?,?,?,?,?,?,?)"},
		{"reused keeps numbers", "WHERE a = $1 OR b = $1", "WHERE a = ?1 OR b = ?1"},
		{"out of order keeps numbers", "SET a = $2 WHERE id = $1", "SET a = ?2 WHERE id = ?1"},
		{"quoted dollar untouched", "SELECT '$1 costs', a FROM t WHERE b = $1", "SELECT '$1 costs', a FROM t WHERE b = ?"},
		{"escaped quote", "SELECT 'it''s $2' WHERE a = $1", "SELECT 'it''s $2' WHERE a = ?"},
		{"bare dollar", "SELECT '$' || $1, $", "SELECT '$' || ?, $"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			if got := (dialect{}).Rebind(tc.in); got != tc.want {
				t.Fatalf("Rebind(%q) = %q, want %q", tc.in, got, tc.want)
			}
		})
	}
}
