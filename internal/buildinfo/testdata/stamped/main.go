// Command stamped prints buildinfo.String(): the buildinfo test builds it
// with the Makefile's -X flags.
package main

import (
	"fmt"

	"github.com/edgefleet/edgefleet/internal/buildinfo"
)

func main() { fmt.Print(buildinfo.String()) }
