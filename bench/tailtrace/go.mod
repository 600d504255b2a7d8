// A module of its own, so that the plugin's module does not depend on
// golang.org/x/exp for a benchmark tool.
module github.com/dnsfront/dnsfront/bench/tailtrace

go 1.26.0

require golang.org/x/exp v0.0.0-20260908205506-85c1c2202aba
