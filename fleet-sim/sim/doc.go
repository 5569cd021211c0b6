// Package sim runs a fleet of real edgefleet agents (the agent package, not
// a copy) in one process against a real control plane: an in-process one
// with the embedded broker, or an external one reached by URL. It shares one
// badger (a namespace per agent) and one onnxruntime between the agents,
// drives synthetic inference traffic, and injects network faults through a
// counting MQTT-aware TCP proxy. fleet-sim's scenario and bench packages
// and its main import it.
package sim
