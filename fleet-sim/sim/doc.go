// Package sim runs a fleet of real edgefleet agents (the agent package, not a
// copy) in one process against a real control plane, in process or external:
// one shared badger and onnxruntime, synthetic inference traffic, a counting
// MQTT-aware proxy for faults, progress counters and a leak check. Imported
// by fleet-sim, fleet-sim/bench and fleet-sim/scenario.
package sim
