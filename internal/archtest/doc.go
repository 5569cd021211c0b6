// Package archtest checks the shape of the module: every package has a doc
// comment whose imported-by sentence names exactly the packages that import
// it (go list is the judge), and the agent links nothing of the control plane
// but its API contract and client. It has no code. Imported by nothing yet.
package archtest
