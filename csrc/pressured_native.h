/* pressured native core: a thin syscall shim. Parsing and policy live in Python. */
#ifndef PRESSURED_NATIVE_H
#define PRESSURED_NATIVE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/inotify.h>
#include <sys/types.h>

struct pn_event {
    uint64_t token;
    uint32_t mask;
};

struct pn_perf;

int pn_open_read(const char *path, int *fd_out);
int pn_close(int fd);
int pn_pread(int fd, char *buf, size_t size, ssize_t *len_out);
int pn_read_batch(const int *fds, int n, char *buf, size_t stride, ssize_t *lens);

int pn_epoll_create(int *epfd_out);
int pn_epoll_add(int epfd, int fd, uint32_t events, uint64_t token);
int pn_epoll_del(int epfd, int fd);
int pn_epoll_wait(int epfd, struct pn_event *out, int max, int timeout_ms, int *n_out);

int pn_psi_open(const char *path, int *fd_out);
int pn_psi_arm(int fd, int full, uint64_t stall_us, uint64_t window_us);

int pn_v1_register(const char *event_control_path, const char *target_path,
                   const char *args, int *efd_out);
int pn_eventfd_create(int *efd_out);
int pn_v1_register_on(int efd, const char *event_control_path, const char *target_path,
                      const char *args);
int pn_eventfd_drain(int fd, uint64_t *value_out);

int pn_perf_open(uint64_t tracepoint_id, int cpu, int ring_pages, struct pn_perf **out, int *fd_out);
int pn_perf_attach_buffer(void *base, size_t len, struct pn_perf **out);
int pn_perf_next(struct pn_perf *p, char *buf, size_t size, size_t *len_out, uint64_t *lost_out);
int pn_perf_close(struct pn_perf *p);

int pn_inotify_init(int *fd_out);
int pn_inotify_add(int fd, const char *path, uint32_t mask, int *wd_out);
int pn_inotify_rm(int fd, int wd);
int pn_read(int fd, char *buf, size_t size, ssize_t *len_out);

#endif
