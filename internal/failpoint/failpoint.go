// Package failpoint lets end-to-end tests stop the server at a named point
// of a multi-step operation (to kill it there and check that what it
// resumes ends well), as etcd's gofail does. Points compile to nothing
// unless the binary is built with the "failpoints" tag; a production build
// has no way to turn one on.
//
// In a build with the tag, SECRETPLANE_FAILPOINTS lists the active points,
// separated by commas. A goroutine that reaches an active point writes
// "failpoint NAME reached" to standard error and waits there until its
// context ends.
package failpoint

// Env is the variable that lists the active points.
const Env = "SECRETPLANE_FAILPOINTS"
