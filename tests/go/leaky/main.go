// leaky is the real Go program the pprof and heapdump tests profile.
//
// It serves net/http/pprof on 127.0.0.1:-port (0 picks a free port) and prints
// "listening on 127.0.0.1:PORT" once the socket is bound, so a test knows where to
// connect. Memory grows in two clearly named places:
//
//	(*leakyCache).grow  keeps every chunk it allocates (the leak), -rate MiB/s up to -cap MiB
//	churnBuffers        allocates short-lived buffers and drops them, so alloc_* and inuse_*
//	                    differ in the profile
//	retainedTable.fill  keeps many small objects, so inuse_objects has a different leader
//	                    than inuse_space
//
// With -write-profile PATH the heap profile is written to PATH once the cache holds
// -write-after MiB, and "wrote PATH" is printed; with -exit-after-write it then exits.
// Only the standard library is used, so building needs no network.
package main

import (
	"flag"
	"fmt"
	"log"
	"net"
	"net/http"
	_ "net/http/pprof"
	"os"
	"runtime"
	"runtime/pprof"
	"sync"
	"time"
)

const mib = 1 << 20

type leakyCache struct {
	mu     sync.Mutex
	chunks [][]byte
	bytes  int
}

// grow keeps what it allocates: the function a heap profile must blame.
//
//go:noinline
func (c *leakyCache) grow(n int) {
	chunk := make([]byte, n)
	for i := range chunk {
		chunk[i] = byte(i)
	}
	c.mu.Lock()
	c.chunks = append(c.chunks, chunk)
	c.bytes += n
	c.mu.Unlock()
}

func (c *leakyCache) size() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.bytes
}

var sink []byte

// churnBuffers allocates garbage: large in alloc_space, small in inuse_space.
//
//go:noinline
func churnBuffers(n int) {
	for i := 0; i < n; i++ {
		sink = make([]byte, 64<<10)
	}
}

type retainedTable struct {
	items []*[32]byte
}

// fill keeps many small objects: the leader of inuse_objects.
//
//go:noinline
func (t *retainedTable) fill(n int) {
	for i := 0; i < n; i++ {
		t.items = append(t.items, new([32]byte))
	}
}

func writeHeapProfile(path string) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	// A GC first so inuse_* reflects live memory, as /debug/pprof/heap?gc=1 does.
	runtime.GC()
	if err := pprof.WriteHeapProfile(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func main() {
	port := flag.Int("port", 0, "TCP port of the pprof HTTP server on 127.0.0.1 (0: any free port)")
	rate := flag.Int("rate", 64, "MiB per second the leak grows")
	capMiB := flag.Int("cap", 48, "MiB at which the leak stops growing")
	chunkKiB := flag.Int("chunk", 256, "KiB per leaked chunk")
	writeProfile := flag.String("write-profile", "", "write the heap profile to this path once the cache holds -write-after MiB")
	writeAfter := flag.Int("write-after", 16, "MiB of leak before -write-profile is written")
	exitAfterWrite := flag.Bool("exit-after-write", false, "exit once the profile is written")
	writeBase := flag.String("write-base", "", "also write a heap profile to this path earlier, once the cache holds -write-base-after MiB (a base for pprof -base)")
	writeBaseAfter := flag.Int("write-base-after", 4, "MiB of leak before -write-base is written")
	flag.Parse()

	// Every allocation sampled, so profiles are exact and deterministic in their leaders.
	runtime.MemProfileRate = 1

	ln, err := net.Listen("tcp", fmt.Sprintf("127.0.0.1:%d", *port))
	if err != nil {
		log.Fatal(err)
	}
	fmt.Printf("listening on %s\n", ln.Addr())
	go func() { log.Fatal(http.Serve(ln, nil)) }()

	cache := &leakyCache{}
	table := &retainedTable{}
	chunk := *chunkKiB << 10
	perTick := *rate * mib / 100 // 100 ticks per second
	if perTick < chunk {
		perTick = chunk
	}
	written, baseWritten := false, false
	for tick := time.NewTicker(10 * time.Millisecond); ; <-tick.C {
		if cache.size() < *capMiB*mib {
			for done := 0; done < perTick; done += chunk {
				cache.grow(chunk)
			}
			churnBuffers(4)
			table.fill(256)
		}
		if *writeBase != "" && !baseWritten && cache.size() >= *writeBaseAfter*mib {
			if err := writeHeapProfile(*writeBase); err != nil {
				log.Fatal(err)
			}
			baseWritten = true
			fmt.Printf("wrote %s\n", *writeBase)
		}
		if *writeProfile != "" && !written && cache.size() >= *writeAfter*mib {
			if err := writeHeapProfile(*writeProfile); err != nil {
				log.Fatal(err)
			}
			written = true
			fmt.Printf("wrote %s\n", *writeProfile)
			if *exitAfterWrite {
				os.Exit(0)
			}
		}
	}
}
