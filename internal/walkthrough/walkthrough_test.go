//go:build unix

package walkthrough_test

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mqttrpc/mqttrpc/internal/mosquittotest"
)

// The walkthrough lives in README.md, and this test reads it from there: the
// README's blocks are the test's input, so that neither can change without
// the other. Each fenced block of the walkthrough section comes right after
// an HTML comment that says what the test does with it:
//
//	<!-- walkthrough:run -->         shell commands, run in order, with the
//	                                 files, as one script (one shell, as a
//	                                 reader pasting the blocks would use)
//	<!-- walkthrough:file -->        a file the script writes where it
//	                                 stands; the block's first line is a
//	                                 comment naming it: "// device/main.go",
//	                                 "# buf.yaml"
//	<!-- walkthrough:buf -->         shell commands that the buf subtest runs
//	                                 in the module instead of protoc's
//	<!-- walkthrough:broker -->      the command that starts the embedded
//	                                 broker (go run ./testbroker/cmd/testbroker)
//	<!-- walkthrough:transcript -->  "$ command" lines and what each prints,
//	                                 run against each broker
//	<!-- walkthrough:untested: why --> shown only, with the reason
const (
	readmePath = "../../README.md"
	repoRoot   = "../.."

	// readmeBrokerURL is the broker the README's commands name; the test
	// puts its own broker's URL in its place.
	readmeBrokerURL = "mqtt://127.0.0.1:1883"

	// Guards against hangs only: builds on a loaded machine take their time,
	// and every program of the transcript answers in seconds.
	buildGuard   = 10 * time.Minute
	processGuard = time.Minute
)

var markerRE = regexp.MustCompile(`^<!-- walkthrough:([a-z]+)(?:: (.+?))? -->$`)

// block is one fenced block of the walkthrough with its marker.
type block struct {
	kind string
	line int    // of the marker in README.md, for messages
	text string // the block's lines, each ending in "\n"
}

// TestWalkthrough follows the README's walkthrough in a fresh module: it
// runs the commands and writes the files as they stand there (protoc, the
// plugins installed from this checkout, a replace line, go mod tidy, go build),
// then runs the transcript, a device and callers, against the embedded
// broker started as the README says and against Mosquitto. It skips when
// protoc is not installed, unless MQTTRPC_REQUIRE_PROTOC=1, and in -short
// mode.
func TestWalkthrough(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a module from scratch; not in -short mode")
	}
	lookPathProtoc(t)
	readme, err := os.ReadFile(readmePath)
	if err != nil {
		t.Fatal(err)
	}
	blocks, err := parseWalkthrough(string(readme))
	if err != nil {
		t.Fatal(err)
	}
	for _, kind := range []string{"run", "file", "broker", "transcript", "buf"} {
		if !slices.ContainsFunc(blocks, func(b block) bool { return b.kind == kind }) {
			t.Fatalf("README.md: the walkthrough has no block marked walkthrough:%s", kind)
		}
	}
	steps, err := parseTranscript(blocks)
	if err != nil {
		t.Fatal(err)
	}
	repo, err := filepath.Abs(repoRoot)
	if err != nil {
		t.Fatal(err)
	}

	tmp := t.TempDir()
	gobin := filepath.Join(tmp, "gobin")
	env := []string{
		"MQTTRPC=" + repo,
		// go install writes the plugins here, and protoc finds them on PATH.
		"GOBIN=" + gobin,
		"PATH=" + gobin + string(os.PathListSeparator) + os.Getenv("PATH"),
		// Offline: everything comes from the module cache, which holds what
		// this checkout needs (go mod download), and so what the module needs.
		"GOPROXY=off", "GOSUMDB=off", "GOWORK=off",
	}

	module := runScript(t, tmp, env, blocks)
	t.Logf("the walkthrough's module is %s", module)

	t.Run("testbroker", func(t *testing.T) {
		runTranscript(t, module, "testbroker", startTestbroker(t, repo, tmp, blocks), steps)
	})
	t.Run("Mosquitto", func(t *testing.T) {
		runTranscript(t, module, "Mosquitto", mosquittotest.Start(t).URL(), steps)
	})
	t.Run("buf", func(t *testing.T) {
		checkBuf(t, module, env, blocks)
	})
}

// parseWalkthrough returns the marked blocks of the README's walkthrough
// section, in order. Every fenced block of the section must be marked.
func parseWalkthrough(readme string) ([]block, error) {
	lines := strings.Split(readme, "\n")
	var blocks []block
	inSection, found := false, false
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if strings.HasPrefix(line, "## ") {
			inSection = strings.HasPrefix(line, "## Walkthrough")
			found = found || inSection
			continue
		}
		m := markerRE.FindStringSubmatch(line)
		fence := strings.HasPrefix(line, "```")
		switch {
		case m == nil && !fence:
			continue
		case !inSection:
			if m != nil {
				return nil, fmt.Errorf("README.md:%d: a walkthrough marker outside the walkthrough section", i+1)
			}
			// A block outside the walkthrough: skip to its end.
			for i++; i < len(lines) && lines[i] != "```"; i++ {
			}
			continue
		case m == nil:
			return nil, fmt.Errorf("README.md:%d: a code block of the walkthrough without a walkthrough marker before it (see internal/walkthrough)", i+1)
		}
		b := block{kind: m[1], line: i + 1}
		switch b.kind {
		case "run", "file", "buf", "broker", "transcript":
			if m[2] != "" {
				return nil, fmt.Errorf("README.md:%d: walkthrough:%s takes no reason", b.line, b.kind)
			}
		case "untested":
			if m[2] == "" {
				return nil, fmt.Errorf("README.md:%d: walkthrough:untested needs a reason (walkthrough:untested: why)", b.line)
			}
		default:
			return nil, fmt.Errorf("README.md:%d: unknown marker walkthrough:%s", b.line, b.kind)
		}
		if i+1 >= len(lines) || !strings.HasPrefix(lines[i+1], "```") {
			return nil, fmt.Errorf("README.md:%d: walkthrough:%s is not followed by a fenced block on the next line", b.line, b.kind)
		}
		var text strings.Builder
		for i += 2; ; i++ {
			if i >= len(lines) {
				return nil, fmt.Errorf("README.md:%d: the block never ends", b.line)
			}
			if lines[i] == "```" {
				break
			}
			text.WriteString(lines[i] + "\n")
		}
		b.text = text.String()
		if b.kind != "untested" {
			blocks = append(blocks, b)
		}
	}
	if !found {
		return nil, errors.New("README.md has no section \"## Walkthrough\"")
	}
	return blocks, nil
}

// filePathOf returns the path a file block names in its first line.
func filePathOf(b block) (string, error) {
	first, _, _ := strings.Cut(b.text, "\n")
	var path string
	for _, prefix := range []string{"// ", "# "} {
		if p, ok := strings.CutPrefix(first, prefix); ok {
			path = strings.TrimSpace(p)
		}
	}
	if path == "" || !filepath.IsLocal(path) || strings.ContainsAny(path, ` '"$`) {
		return "", fmt.Errorf("README.md:%d: a walkthrough:file block must start with a comment naming a relative path, like \"// device/main.go\"; got %q", b.line, first)
	}
	return path, nil
}

// runScript runs the run and file blocks as one shell script in a new
// directory of tmp and returns the directory the script ends in: the module.
func runScript(t *testing.T, tmp string, env []string, blocks []block) string {
	t.Helper()
	const eof = "WALKTHROUGH_EOF"
	where := filepath.Join(tmp, "module-dir")
	var script strings.Builder
	script.WriteString("set -eux\n")
	for _, b := range blocks {
		switch b.kind {
		case "run":
			fmt.Fprintf(&script, "# README.md:%d\n%s", b.line, b.text)
		case "file":
			path, err := filePathOf(b)
			if err != nil {
				t.Fatal(err)
			}
			if strings.Contains(b.text, eof) {
				t.Fatalf("README.md:%d: the file contains %s", b.line, eof)
			}
			fmt.Fprintf(&script, "# README.md:%d\ncat > '%s' <<'%s'\n%s%s\n", b.line, path, eof, b.text, eof)
		}
	}
	fmt.Fprintf(&script, "pwd > '%s'\n", where)
	scriptPath := filepath.Join(tmp, "walkthrough.sh")
	if err := os.WriteFile(scriptPath, []byte(script.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	work := filepath.Join(tmp, "work")
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	out := run(t, work, env, buildGuard, "sh", scriptPath)
	t.Logf("sh %s:\n%s", scriptPath, out)
	dir, err := os.ReadFile(where)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(dir))
}

// step is one command of the transcript with the lines it must print.
type step struct {
	line       int      // in README.md
	argv       []string // nil for kill
	background bool     // ends in "&": runs on; its lines are what it prints first
	kill       int      // "kill %N": SIGTERM to job N, then what it prints until it exits
	want       []wantLine
}

// wantLine is a line of output; one that ends in "# on BROKER" is printed
// only on that broker.
type wantLine struct {
	text   string
	broker string // "" for every broker
}

var (
	onBrokerRE = regexp.MustCompile(`^(.*\S)\s+# on (testbroker|Mosquitto)$`)
	killRE     = regexp.MustCompile(`^kill %([1-9][0-9]*)$`)
)

// parseTranscript reads the transcript block. Commands are plain words: the
// test runs them without a shell.
func parseTranscript(blocks []block) ([]step, error) {
	i := slices.IndexFunc(blocks, func(b block) bool { return b.kind == "transcript" })
	b := blocks[i]
	var steps []step
	jobs := 0
	for n, line := range strings.Split(strings.TrimRight(b.text, "\n"), "\n") {
		lineNo := b.line + 2 + n
		cmd, isCmd := strings.CutPrefix(line, "$ ")
		switch {
		case line == "":
			continue
		case !isCmd && len(steps) == 0:
			return nil, fmt.Errorf("README.md:%d: output before the first command", lineNo)
		case !isCmd:
			w := wantLine{text: line}
			if m := onBrokerRE.FindStringSubmatch(line); m != nil {
				w = wantLine{text: m[1], broker: m[2]}
			}
			steps[len(steps)-1].want = append(steps[len(steps)-1].want, w)
			continue
		}
		s := step{line: lineNo}
		if m := killRE.FindStringSubmatch(cmd); m != nil {
			s.kill, _ = strconv.Atoi(m[1])
			if s.kill > jobs {
				return nil, fmt.Errorf("README.md:%d: %q names no job started before it", lineNo, cmd)
			}
			steps = append(steps, s)
			continue
		}
		if strings.ContainsAny(cmd, "'\"$`\\|;<>*?()") {
			return nil, fmt.Errorf("README.md:%d: %q: the transcript holds plain commands only (the test runs them without a shell)", lineNo, cmd)
		}
		s.argv = strings.Fields(cmd)
		if s.argv[len(s.argv)-1] == "&" {
			s.background, s.argv = true, s.argv[:len(s.argv)-1]
			jobs++
		}
		if !strings.Contains(s.argv[0], "/") || filepath.IsAbs(s.argv[0]) {
			return nil, fmt.Errorf("README.md:%d: %q: run a program the walkthrough built (bin/...)", lineNo, cmd)
		}
		if !slices.Contains(s.argv, readmeBrokerURL) {
			return nil, fmt.Errorf("README.md:%d: %q: give the broker as %s, which the test replaces with its own", lineNo, cmd, readmeBrokerURL)
		}
		steps = append(steps, s)
	}
	if len(steps) == 0 {
		return nil, fmt.Errorf("README.md:%d: the transcript has no command", b.line)
	}
	return steps, nil
}

// runTranscript runs the transcript's commands in module against the
// broker at url and compares what they print with the transcript.
func runTranscript(t *testing.T, module, broker, url string, steps []step) {
	var jobs []*job
	for _, s := range steps {
		var want []string
		for _, w := range s.want {
			if w.broker == "" || w.broker == broker {
				want = append(want, strings.ReplaceAll(w.text, readmeBrokerURL, url))
			}
		}
		argv := make([]string, len(s.argv))
		for i, a := range s.argv {
			argv[i] = strings.ReplaceAll(a, readmeBrokerURL, url)
		}
		switch {
		case s.kill > 0:
			j := jobs[s.kill-1]
			if err := j.cmd.Process.Signal(syscall.SIGTERM); err != nil {
				t.Fatalf("README.md:%d: kill %%%d: %v", s.line, s.kill, err)
			}
			got := j.rest(t)
			compare(t, s, []string{"kill", "%" + strconv.Itoa(s.kill)}, got, want, j.stderr.String())
			if err := j.wait(); err != nil {
				t.Errorf("README.md:%d: %s after SIGTERM: %v\nstderr: %s", s.line, strings.Join(j.argv, " "), err, j.stderr.String())
			}
		case s.background:
			j := startJob(t, module, argv)
			jobs = append(jobs, j)
			compare(t, s, argv, j.next(t, len(want)), want, j.stderr.String())
		default:
			ctx, cancel := context.WithTimeout(t.Context(), processGuard)
			cmd := exec.CommandContext(ctx, filepath.Join(module, argv[0]), argv[1:]...)
			cmd.Dir = module
			cmd.WaitDelay = 5 * time.Second
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			cancel()
			if err != nil {
				t.Errorf("README.md:%d: %s: %v\nstdout: %s\nstderr: %s", s.line, strings.Join(argv, " "), err, out, stderr.String())
			}
			compare(t, s, argv, lines(string(out)), want, stderr.String())
		}
	}
}

func compare(t *testing.T, s step, argv, got, want []string, stderr string) {
	t.Helper()
	t.Logf("README.md:%d: $ %s\n\t%s", s.line, strings.Join(argv, " "), strings.Join(got, "\n\t"))
	if !slices.Equal(got, want) {
		t.Errorf("README.md:%d: %s printed\n\t%s\nwant\n\t%s\nstderr: %s", s.line, strings.Join(argv, " "),
			strings.Join(got, "\n\t"), strings.Join(want, "\n\t"), stderr)
	}
}

func lines(s string) []string {
	s = strings.TrimRight(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

// job is a program of the transcript running in the background.
type job struct {
	argv   []string
	cmd    *exec.Cmd
	lines  chan string // its standard output, closed at the end
	stderr *syncBuffer
	waited bool
}

func startJob(t *testing.T, dir string, argv []string) *job {
	t.Helper()
	j := &job{argv: argv, lines: make(chan string, 64), stderr: new(syncBuffer)}
	path := argv[0]
	if !filepath.IsAbs(path) {
		path = filepath.Join(dir, path)
	}
	j.cmd = exec.Command(path, argv[1:]...)
	j.cmd.Dir = dir
	j.cmd.Stderr = j.stderr
	stdout, err := j.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := j.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		defer close(j.lines)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			j.lines <- sc.Text()
		}
	}()
	t.Cleanup(func() {
		if !j.waited {
			_ = j.cmd.Process.Kill()
			for range j.lines {
			}
			_ = j.wait()
		}
	})
	return j
}

// next returns the next n lines the job prints, or fewer if it ends first.
func (j *job) next(t *testing.T, n int) []string {
	t.Helper()
	var got []string
	timeout := time.NewTimer(processGuard)
	defer timeout.Stop()
	for len(got) < n {
		select {
		case line, ok := <-j.lines:
			if !ok {
				return got
			}
			got = append(got, line)
		case <-timeout.C:
			t.Fatalf("%s printed %q and then nothing for %v\nstderr: %s", strings.Join(j.argv, " "), got, processGuard, j.stderr.String())
		}
	}
	return got
}

// rest returns what the job prints until it ends.
func (j *job) rest(t *testing.T) []string {
	t.Helper()
	return j.next(t, math.MaxInt)
}

func (j *job) wait() error {
	j.waited = true
	return j.cmd.Wait()
}

// startTestbroker starts the embedded broker with the command of the
// README's broker block, on a free port, and returns its URL.
func startTestbroker(t *testing.T, repo, tmp string, blocks []block) string {
	t.Helper()
	const pkg = "./testbroker/cmd/testbroker"
	i := slices.IndexFunc(blocks, func(b block) bool { return b.kind == "broker" })
	var args []string
	found := false
	for line := range strings.Lines(blocks[i].text) {
		line, _, _ = strings.Cut(line, "#")
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "go" && f[1] == "run" && f[2] == pkg {
			args, found = f[3:], true
		}
	}
	if !found {
		t.Fatalf("README.md:%d: the broker block has no line \"go run %s\"", blocks[i].line, pkg)
	}
	bin := filepath.Join(tmp, "testbroker")
	run(t, repo, nil, buildGuard, "go", "build", "-o", bin, pkg)
	// A later -addr wins: the README's broker listens on 1883, this one
	// where the kernel says.
	j := startJob(t, repo, append([]string{bin}, append(args, "-addr", "127.0.0.1:0")...))
	url := j.next(t, 1)
	if len(url) != 1 || !strings.HasPrefix(url[0], "mqtt://127.0.0.1:") {
		t.Fatalf("%s printed %q, want its URL\nstderr: %s", pkg, url, j.stderr.String())
	}
	t.Cleanup(func() {
		if err := j.cmd.Process.Signal(syscall.SIGTERM); err != nil {
			t.Error(err)
		}
		if rest := j.rest(t); len(rest) > 0 {
			t.Errorf("testbroker printed %q after its URL", rest)
		}
		if err := j.wait(); err != nil {
			t.Errorf("testbroker after SIGTERM: %v\nstderr: %s", err, j.stderr.String())
		}
	})
	return url[0]
}

// checkBuf generates the module's code again with the README's buf
// commands and checks that buf writes the same files as protoc. It skips
// when buf is not installed.
func checkBuf(t *testing.T, module string, env []string, blocks []block) {
	if _, err := exec.LookPath("buf"); err != nil {
		t.Skip("buf is not installed (npm install @bufbuild/buf, or see buf.build)")
	}
	byProtoc := generatedFiles(t, module)
	if len(byProtoc) == 0 {
		t.Fatal("protoc generated no .pb.go file")
	}
	for name := range byProtoc {
		if err := os.Remove(filepath.Join(module, name)); err != nil {
			t.Fatal(err)
		}
	}
	var script strings.Builder
	script.WriteString("set -eux\n")
	for _, b := range blocks {
		if b.kind == "buf" {
			fmt.Fprintf(&script, "# README.md:%d\n%s", b.line, b.text)
		}
	}
	t.Logf("buf:\n%s", run(t, module, env, buildGuard, "sh", "-c", script.String()))
	byBuf := generatedFiles(t, module)
	// protoc-gen-go names the compiler's version, which buf does not give.
	version := regexp.MustCompile(`(?m)^// \tprotoc +.*$`)
	for name, want := range byProtoc {
		got, ok := byBuf[name]
		switch {
		case !ok:
			t.Errorf("buf did not write %s", name)
		case version.ReplaceAllString(got, "") != version.ReplaceAllString(want, ""):
			t.Errorf("buf wrote a %s that differs from protoc's:\n%s", name, got)
		}
	}
	for name := range byBuf {
		if _, ok := byProtoc[name]; !ok {
			t.Errorf("buf wrote %s, which protoc did not", name)
		}
	}
	run(t, module, env, buildGuard, "go", "build", "./...")
}

// generatedFiles returns the .pb.go files under dir, by relative path.
func generatedFiles(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() || !strings.HasSuffix(path, ".pb.go") {
			return err
		}
		content, err := os.ReadFile(path)
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, path)
		files[filepath.ToSlash(rel)] = string(content)
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// lookPathProtoc returns the path of protoc, or skips the test when it is
// not installed, unless MQTTRPC_REQUIRE_PROTOC=1 (as in protoc-gen-mqttrpc).
func lookPathProtoc(t *testing.T) string {
	t.Helper()
	protoc, err := exec.LookPath("protoc")
	if err != nil {
		if os.Getenv("MQTTRPC_REQUIRE_PROTOC") == "1" {
			t.Fatal("protoc is not installed and MQTTRPC_REQUIRE_PROTOC=1 (apt-get install -y protobuf-compiler libprotobuf-dev)")
		}
		t.Skip("protoc is not installed; set MQTTRPC_REQUIRE_PROTOC=1 to fail instead")
	}
	return protoc
}

// run runs a command to its end and returns its combined output; it fails
// t if the command fails.
func run(t *testing.T, dir string, env []string, guard time.Duration, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), guard)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	cmd.WaitDelay = 5 * time.Second
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s (in %s): %v\n%s", name, strings.Join(args, " "), dir, err, out)
	}
	return string(out)
}

// syncBuffer is a bytes.Buffer that a process writes to while the test
// reads it.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}
