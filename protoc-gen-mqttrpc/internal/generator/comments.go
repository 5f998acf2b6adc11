package generator

import (
	"strings"
	"unicode/utf8"

	"google.golang.org/protobuf/compiler/protogen"
)

// commentWidth is where wrapped doc comments break, leaving room for "// ".
const commentWidth = 77

// deprecationNotice is the paragraph that marks deprecated identifiers; Go
// tools recognise "Deprecated: " at the start of a paragraph.
const deprecationNotice = "// Deprecated: Do not use."

// wrapComment writes text as a "//" comment wrapped at commentWidth.
func wrapComment(g *protogen.GeneratedFile, text string) {
	var line strings.Builder
	for _, word := range strings.Fields(text) {
		if line.Len() > 0 && utf8.RuneCountInString(line.String())+1+utf8.RuneCountInString(word) > commentWidth {
			g.P("// ", line.String())
			line.Reset()
		}
		if line.Len() > 0 {
			line.WriteByte(' ')
		}
		line.WriteString(word)
	}
	if line.Len() > 0 {
		g.P("// ", line.String())
	}
}

// docComment writes a doc comment: our own summary, then the comments from
// the .proto file as a separate paragraph, then the deprecation notice.
func docComment(g *protogen.GeneratedFile, summary string, fromProto protogen.Comments, deprecated bool) {
	wrapComment(g, summary)
	if s := strings.TrimSpace(fromProto.String()); s != "" {
		g.P("//")
		g.P(s)
	}
	if deprecated {
		g.P("//")
		g.P(deprecationNotice)
	}
}

// methodComment writes the doc comment of an interface method: the method's
// comments from the .proto file, or fallback when it has none, then the
// deprecation notice.
func methodComment(g *protogen.GeneratedFile, fromProto protogen.Comments, fallback string, deprecated bool) {
	if s := strings.TrimSpace(fromProto.String()); s != "" {
		g.P(s)
	} else {
		wrapComment(g, fallback)
	}
	if deprecated {
		g.P("//")
		g.P(deprecationNotice)
	}
}
