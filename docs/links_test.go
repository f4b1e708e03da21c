// Package docs holds the project's documentation pages; its test checks
// that every link between them (and from README.md) leads somewhere.
package docs

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

var (
	link       = regexp.MustCompile(`\]\(([^)\s]+)\)`)
	heading    = regexp.MustCompile(`(?m)^#+ (.+)$`)
	namedPlace = regexp.MustCompile(`<a name="([^"]+)"></a>`)
	notInSlug  = regexp.MustCompile(`[^\p{L}\p{N}_\- ]`)
)

// slug is the anchor GitHub gives a heading.
func slug(h string) string {
	return strings.ReplaceAll(notInSlug.ReplaceAllString(strings.ToLower(strings.TrimSpace(h)), ""), " ", "-")
}

// prose is a page without its fenced code blocks (a "](" there is code).
func prose(text string) string {
	var out []string
	fenced := false
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, "```") {
			fenced = !fenced
			continue
		}
		if !fenced {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

func anchors(text string) map[string]bool {
	out := map[string]bool{}
	text = prose(text)
	for _, m := range heading.FindAllStringSubmatch(text, -1) {
		out[slug(m[1])] = true
	}
	for _, m := range namedPlace.FindAllStringSubmatch(text, -1) {
		out[m[1]] = true
	}
	return out
}

func TestSlug(t *testing.T) {
	tests := map[string]string{
		"Least-work routing": "least-work-routing",
		"Rollouts across a weight update: groups, bounded staleness, pinned versions": "rollouts-across-a-weight-update-groups-bounded-staleness-pinned-versions",
		"The `x-diffusion-tenant` header":                                             "the-x-diffusion-tenant-header",
	}
	for in, want := range tests {
		if got := slug(in); got != want {
			t.Errorf("slug(%q) = %q, want %q", in, got, want)
		}
	}
}

// Every relative link in README.md and docs/*.md names a file that exists
// and, into a page, an anchor that page has: moving a section breaks no
// link silently.
func TestLinksLeadSomewhere(t *testing.T) {
	pages, err := filepath.Glob("*.md")
	if err != nil {
		t.Fatal(err)
	}
	pages = append(pages, "../README.md")
	texts := map[string]string{}
	read := func(p string) (string, error) {
		p = filepath.Clean(p)
		if s, ok := texts[p]; ok {
			return s, nil
		}
		b, err := os.ReadFile(p)
		texts[p] = string(b)
		return string(b), err
	}
	checked := 0
	for _, p := range pages {
		text, err := read(p)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(prose(text), -1) {
			target := m[1]
			if strings.Contains(target, "://") || strings.HasPrefix(target, "mailto:") {
				continue
			}
			file, anchor, _ := strings.Cut(target, "#")
			dest := p
			if file != "" {
				dest = filepath.Join(filepath.Dir(p), file)
			}
			destText, err := read(dest)
			if err != nil {
				t.Errorf("%s: link %s: %v", p, target, err)
				continue
			}
			checked++
			if anchor != "" && strings.HasSuffix(dest, ".md") && !anchors(destText)[anchor] {
				t.Errorf("%s: link %s: %s has no anchor %q", p, target, dest, anchor)
			}
		}
	}
	if checked < 20 {
		t.Fatalf("checked %d links: the pattern no longer finds the docs' links", checked)
	}
}
