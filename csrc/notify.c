/* Kernel notifications: epoll, PSI triggers and cgroup v1 eventfd registrations. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <unistd.h>

#include "pressured_native.h"

int pn_epoll_create(int *epfd_out)
{
    int fd = epoll_create1(EPOLL_CLOEXEC);
    if (fd < 0)
        return -errno;
    *epfd_out = fd;
    return 0;
}

int pn_epoll_add(int epfd, int fd, uint32_t events, uint64_t token)
{
    struct epoll_event ev;
    memset(&ev, 0, sizeof(ev));
    ev.events = events;
    ev.data.u64 = token;
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
        return -errno;
    return 0;
}

int pn_epoll_del(int epfd, int fd)
{
    if (epoll_ctl(epfd, EPOLL_CTL_DEL, fd, NULL) < 0)
        return -errno;
    return 0;
}

/* EINTR is returned, not retried: Python must get the chance to run its signal handlers
 * (SIGTERM, SIGHUP) and then waits again with the remaining timeout (PEP 475). */
int pn_epoll_wait(int epfd, struct pn_event *out, int max, int timeout_ms, int *n_out)
{
    struct epoll_event evs[64];
    if (max <= 0)
        return -EINVAL;
    if (max > 64)
        max = 64;
    int n = epoll_wait(epfd, evs, max, timeout_ms);
    if (n < 0)
        return -errno;
    for (int i = 0; i < n; i++) {
        out[i].token = evs[i].data.u64;
        out[i].mask = evs[i].events;
    }
    *n_out = n;
    return 0;
}

int pn_psi_open(const char *path, int *fd_out)
{
    int fd = open(path, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0)
        return -errno;
    *fd_out = fd;
    return 0;
}

/* psi.rst: "<some|full> <stall amount in us> <time window in us>". The kernel copies at most
 * 32 bytes and overwrites the last with NUL, so the NUL is written with the text. */
int pn_psi_arm(int fd, int full, uint64_t stall_us, uint64_t window_us)
{
    char buf[64];
    int len = snprintf(buf, sizeof(buf), "%s %llu %llu", full ? "full" : "some",
                       (unsigned long long)stall_us, (unsigned long long)window_us);
    if (len < 0 || (size_t)len >= sizeof(buf))
        return -EINVAL;
    ssize_t n;
    do {
        n = write(fd, buf, (size_t)len + 1);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    return 0;
}

int pn_eventfd_create(int *efd_out)
{
    int efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (efd < 0)
        return -errno;
    *efd_out = efd;
    return 0;
}

/* cgroup-v1/memory.rst: the control file is only needed while registering; the kernel keeps
 * its own references, and closing the eventfd later removes every registration made on it.
 * One eventfd may carry several registrations (each adds its own wait on it). */
int pn_v1_register_on(int efd, const char *event_control_path, const char *target_path,
                      const char *args)
{
    int rc = 0;
    int tfd = open(target_path, O_RDONLY | O_CLOEXEC);
    if (tfd < 0)
        return -errno;
    int cfd = open(event_control_path, O_WRONLY | O_CLOEXEC);
    if (cfd < 0) {
        rc = -errno;
        close(tfd);
        return rc;
    }
    char buf[256];
    int len;
    if (args && args[0])
        len = snprintf(buf, sizeof(buf), "%d %d %s", efd, tfd, args);
    else
        len = snprintf(buf, sizeof(buf), "%d %d", efd, tfd);
    if (len < 0 || (size_t)len >= sizeof(buf)) {
        rc = -EINVAL;
    } else {
        ssize_t n;
        do {
            n = write(cfd, buf, (size_t)len);
        } while (n < 0 && errno == EINTR);
        if (n < 0)
            rc = -errno;
    }
    close(cfd);
    close(tfd);
    return rc;
}

int pn_v1_register(const char *event_control_path, const char *target_path,
                   const char *args, int *efd_out)
{
    int efd = -1;
    int rc = pn_eventfd_create(&efd);
    if (rc < 0)
        return rc;
    rc = pn_v1_register_on(efd, event_control_path, target_path, args);
    if (rc < 0) {
        close(efd);
        return rc;
    }
    *efd_out = efd;
    return 0;
}

int pn_eventfd_drain(int fd, uint64_t *value_out)
{
    uint64_t v = 0;
    ssize_t n;
    do {
        n = read(fd, &v, sizeof(v));
    } while (n < 0 && errno == EINTR);
    if (n < 0) {
        if (errno == EAGAIN) {
            *value_out = 0;
            return 0;
        }
        return -errno;
    }
    if (n != (ssize_t)sizeof(v))
        return -EIO;
    *value_out = v;
    return 0;
}

int pn_inotify_init(int *fd_out)
{
    int fd = inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    if (fd < 0)
        return -errno;
    *fd_out = fd;
    return 0;
}

int pn_inotify_add(int fd, const char *path, uint32_t mask, int *wd_out)
{
    int wd = inotify_add_watch(fd, path, mask);
    if (wd < 0)
        return -errno;
    *wd_out = wd;
    return 0;
}

int pn_inotify_rm(int fd, int wd)
{
    if (inotify_rm_watch(fd, wd) < 0)
        return -errno;
    return 0;
}
