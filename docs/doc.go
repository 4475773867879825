// Package docs holds comfygate's documentation (the Markdown files beside
// this one, indexed in the repository's README.md) and the tests that keep
// it true to the code; it has no Go code of its own.
package docs
