//go:build race

package proxy

// raceEnabled: the race detector's sync.Pool drops pooled objects at
// random, so allocation counts are exact only without it.
const raceEnabled = true
