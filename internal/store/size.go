package store

import (
	"io/fs"
	"path/filepath"
)

// dirSizes sums the disk usage of badger's files under dir.
func dirSizes(dir string) (lsm, vlog int64) {
	_ = filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return nil // a file removed by compaction mid-walk is not an error
		}
		ext := filepath.Ext(path)
		if ext != ".sst" && ext != ".mem" && ext != ".vlog" {
			return nil
		}
		info, err := d.Info()
		if err != nil {
			return nil
		}
		n := diskUsage(info)
		if ext == ".vlog" {
			vlog += n
		} else {
			lsm += n
		}
		return nil
	})
	return lsm, vlog
}
