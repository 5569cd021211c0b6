//go:build !linux

package sim

import "time"

// brokerConns is only measured on Linux.
func brokerConns(int) int { return -1 }

func waitBrokerConns(int, time.Duration) int { return -1 }
