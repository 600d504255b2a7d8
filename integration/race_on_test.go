//go:build race

package integration

// raceEnabled: the suite runs with -race, so the Caddy binary under test
// is built with it too (the server code only runs in that binary).
const raceEnabled = true
