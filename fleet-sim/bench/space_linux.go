package bench

import "syscall"

// freeBytes is the space left to an unprivileged writer in the file
// system holding dir.
func freeBytes(dir string) (uint64, bool) {
	var st syscall.Statfs_t
	if syscall.Statfs(dir, &st) != nil {
		return 0, false
	}
	return st.Bavail * uint64(st.Bsize), true
}
