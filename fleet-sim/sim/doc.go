// Package sim runs a fleet of real edgefleet agents (the agent package, not a
// copy) in one process against a real control plane, in process or external:
// one shared badger and onnxruntime, synthetic inference traffic, a counting
// MQTT-aware proxy for faults (with a tap on every packet), progress
// counters and a leak check. Imported by fleet-sim, fleet-sim/bench,
// fleet-sim/scenario and fleet-sim/soak.
package sim
