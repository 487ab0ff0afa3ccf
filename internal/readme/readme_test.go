// Package readme checks that the README's Go code is code the project
// compiles: every ```go block must appear, line for line, in a Go file of
// the module (a test, an Example or a program), so a README that drifts
// from the API fails the build's tests instead of misleading a reader.
package readme

import (
	"bufio"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// root is the module's directory, two levels up from this package.
const root = "../.."

// goBlocks returns the ```go blocks of a markdown file, each as its lines
// with surrounding whitespace trimmed, blank lines dropped.
func goBlocks(t *testing.T, path string) [][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var blocks [][]string
	var cur []string
	in := false
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case !in && strings.TrimSpace(line) == "```go":
			in, cur = true, nil
		case in && strings.TrimSpace(line) == "```":
			in = false
			blocks = append(blocks, cur)
		case in:
			if l := strings.TrimSpace(line); l != "" {
				cur = append(cur, l)
			}
		}
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return blocks
}

// goFiles returns every Go file of the module, each as its trimmed,
// non-blank lines.
func goFiles(t *testing.T) map[string][]string {
	t.Helper()
	files := map[string][]string{}
	err := filepath.WalkDir(root, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() && (strings.HasPrefix(d.Name(), ".") && path != root) {
			return filepath.SkipDir
		}
		if d.IsDir() || !strings.HasSuffix(path, ".go") {
			return nil
		}
		b, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		var lines []string
		for _, l := range strings.Split(string(b), "\n") {
			if l = strings.TrimSpace(l); l != "" {
				lines = append(lines, l)
			}
		}
		files[path] = lines
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// contains reports whether block appears in lines as a contiguous run.
func contains(lines, block []string) bool {
	for i := 0; i+len(block) <= len(lines); i++ {
		match := true
		for j, b := range block {
			if lines[i+j] != b {
				match = false
				break
			}
		}
		if match {
			return true
		}
	}
	return false
}

// TestREADMECodeIsCompiled: every Go block of README.md stands, line for
// line, in a Go file of the module.
func TestREADMECodeIsCompiled(t *testing.T) {
	files := goFiles(t)
	blocks := goBlocks(t, filepath.Join(root, "README.md"))
	if len(blocks) == 0 {
		t.Fatal("README.md has no Go block: the test would check nothing")
	}
	for i, b := range blocks {
		found := ""
		for path, lines := range files {
			if contains(lines, b) {
				found = path
				break
			}
		}
		if found == "" {
			t.Errorf("README.md's Go block %d (starting %q) is in no Go file of the module: copy it from a test or Example, or add one that holds it", i+1, b[0])
		} else {
			t.Logf("block %d (%q): %s", i+1, b[0], found)
		}
	}
}
