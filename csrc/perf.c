/* oom:mark_victim through perf_event_open(PERF_TYPE_TRACEPOINT): no BPF needed. One event per
 * CPU, each with a small mmap ring; samples carry PERF_SAMPLE_RAW, the tracepoint's own record,
 * which Python decodes with the field layout from tracefs' format file. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <linux/perf_event.h>

#include "pressured_native.h"

struct pn_perf {
    int fd;          /* -1 for a ring over caller memory (pn_perf_attach_buffer) */
    void *base;      /* the struct perf_event_mmap_page, then the data area */
    size_t map_len;  /* 0 when base is not ours to unmap */
    size_t data_off;
    size_t data_len; /* a power of two */
    uint64_t lost;
};

int pn_perf_open(uint64_t tracepoint_id, int cpu, int ring_pages, struct pn_perf **out, int *fd_out)
{
    if (ring_pages <= 0 || (ring_pages & (ring_pages - 1)) != 0)
        return -EINVAL;
    struct perf_event_attr attr;
    memset(&attr, 0, sizeof(attr));
    attr.type = PERF_TYPE_TRACEPOINT;
    attr.size = sizeof(attr);
    attr.config = tracepoint_id;
    attr.sample_period = 1;
    attr.sample_type = PERF_SAMPLE_RAW;
    attr.wakeup_events = 1;
    int fd = (int)syscall(SYS_perf_event_open, &attr, -1, cpu, -1, PERF_FLAG_FD_CLOEXEC);
    if (fd < 0)
        return -errno;
    long page = sysconf(_SC_PAGESIZE);
    size_t map_len = (size_t)page * (size_t)(ring_pages + 1);
    void *base = mmap(NULL, map_len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    if (base == MAP_FAILED) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    struct pn_perf *p = calloc(1, sizeof(*p));
    if (!p) {
        munmap(base, map_len);
        close(fd);
        return -ENOMEM;
    }
    p->fd = fd;
    p->base = base;
    p->map_len = map_len;
    p->data_off = (size_t)page;
    p->data_len = (size_t)page * (size_t)ring_pages;
    if (ioctl(fd, PERF_EVENT_IOC_ENABLE, 0) < 0) {
        int rc = -errno;
        pn_perf_close(p);
        return rc;
    }
    *out = p;
    *fd_out = fd;
    return 0;
}

/* A ring over caller memory laid out like the perf mmap: a struct perf_event_mmap_page whose
 * data_offset and data_size say where the data area is, within len bytes. pn_perf_next reads
 * it as it reads a kernel ring; the memory stays the caller's. Tests use it to write records a
 * real kernel never writes. */
int pn_perf_attach_buffer(void *base, size_t len, struct pn_perf **out)
{
    const struct perf_event_mmap_page *meta = base;
    if (!base || ((uintptr_t)base & 7) != 0 || len < sizeof(*meta))
        return -EINVAL;
    uint64_t off = meta->data_offset;
    uint64_t size = meta->data_size;
    if (off < sizeof(*meta) || (off & 7) != 0 || off > len || size == 0 ||
        (size & (size - 1)) != 0 || size > len - off)
        return -EINVAL;
    struct pn_perf *p = calloc(1, sizeof(*p));
    if (!p)
        return -ENOMEM;
    p->fd = -1;
    p->base = base;
    p->data_off = (size_t)off;
    p->data_len = (size_t)size;
    *out = p;
    return 0;
}

/* Copies len bytes from ring position pos; callers keep len <= data_len (every copy lies
 * within one record, and a record within the published part of the area). */
static void ring_copy(const struct pn_perf *p, const char *data, uint64_t pos, void *dst, size_t len)
{
    size_t off = (size_t)(pos % p->data_len);
    size_t first = p->data_len - off;
    if (first >= len) {
        memcpy(dst, data + off, len);
    } else {
        memcpy(dst, data + off, first);
        memcpy((char *)dst + first, data, len - first);
    }
}

/* A malformed record: where the next one starts cannot be known, so everything published is
 * dropped (data_tail moves to data_head and the ring is not stuck). *len_out says how much. */
static int ring_skip(struct perf_event_mmap_page *meta, uint64_t tail, uint64_t head,
                     size_t *len_out)
{
    *len_out = (size_t)(head - tail);
    __atomic_store_n(&meta->data_tail, head, __ATOMIC_RELEASE);
    return -EIO;
}

int pn_perf_next(struct pn_perf *p, char *buf, size_t size, size_t *len_out, uint64_t *lost_out)
{
    struct perf_event_mmap_page *meta = p->base;
    const char *data = (const char *)p->base + p->data_off;
    const uint64_t hsize = sizeof(struct perf_event_header);
    int rc = 0;
    *len_out = 0;
    for (;;) {
        uint64_t head = __atomic_load_n(&meta->data_head, __ATOMIC_ACQUIRE);
        uint64_t tail = meta->data_tail;
        if (tail == head)
            break;
        /* The kernel publishes data_head after whole records and never runs more than the
         * area ahead of data_tail. Every length read from the ring is checked against that
         * before it is used, so no copy leaves its record or the area. */
        uint64_t avail = head - tail;
        if (avail > p->data_len || avail < hsize) {
            rc = ring_skip(meta, tail, head, len_out);
            break;
        }
        struct perf_event_header hdr;
        ring_copy(p, data, tail, &hdr, sizeof(hdr));
        if (hdr.size < hsize || hdr.size > p->data_len || hdr.size > avail) {
            rc = ring_skip(meta, tail, head, len_out);
            break;
        }
        uint64_t body = hdr.size - hsize;
        int found = 0;
        if (hdr.type == PERF_RECORD_SAMPLE) {
            uint32_t raw_size = 0;
            if (body < sizeof(raw_size)) {
                rc = ring_skip(meta, tail, head, len_out);
                break;
            }
            ring_copy(p, data, tail + hsize, &raw_size, sizeof(raw_size));
            if (raw_size > body - sizeof(raw_size)) {
                rc = ring_skip(meta, tail, head, len_out);
                break;
            }
            if (raw_size > size) {
                /* left in the ring for a call with a buffer of *len_out bytes */
                *len_out = raw_size;
                rc = -EMSGSIZE;
                break;
            }
            ring_copy(p, data, tail + hsize + sizeof(raw_size), buf, raw_size);
            *len_out = raw_size;
            found = raw_size > 0; /* an empty one carries nothing: 0 means "ring empty" */
        } else if (hdr.type == PERF_RECORD_LOST) {
            uint64_t rec[2]; /* id, lost */
            if (body < sizeof(rec)) {
                rc = ring_skip(meta, tail, head, len_out);
                break;
            }
            ring_copy(p, data, tail + hsize, rec, sizeof(rec));
            p->lost += rec[1];
        }
        __atomic_store_n(&meta->data_tail, tail + hdr.size, __ATOMIC_RELEASE);
        if (found)
            break;
    }
    *lost_out = p->lost;
    return rc;
}

int pn_perf_close(struct pn_perf *p)
{
    if (!p)
        return 0;
    if (p->map_len)
        munmap(p->base, p->map_len);
    if (p->fd >= 0)
        close(p->fd);
    free(p);
    return 0;
}
