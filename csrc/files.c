/* Plain file access for the adaptive path: kept-open fds read with pread at offset 0, so a
 * sweep over many cgroups costs one Python->C transition and one syscall per file. */
#include <errno.h>
#include <fcntl.h>
#include <unistd.h>

#include "pressured_native.h"

int pn_open_read(const char *path, int *fd_out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
    if (fd < 0)
        return -errno;
    *fd_out = fd;
    return 0;
}

int pn_close(int fd)
{
    /* close() on Linux releases the fd even when it reports EINTR: never retry */
    if (close(fd) < 0 && errno != EINTR)
        return -errno;
    return 0;
}

int pn_pread(int fd, char *buf, size_t size, ssize_t *len_out)
{
    ssize_t n;
    do {
        n = pread(fd, buf, size, 0);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    *len_out = n;
    return 0;
}

/* Each slot holds stride - 1 bytes and a NUL. A whole slot is asked for, so a file that does
 * not fit shows as a full read: that file gets -EFBIG instead of a cut-short count. */
int pn_read_batch(const int *fds, int n, char *buf, size_t stride, ssize_t *lens)
{
    if (n < 0 || stride < 2)
        return -EINVAL;
    for (int i = 0; i < n; i++) {
        ssize_t got;
        char *slot = buf + (size_t)i * stride;
        do {
            got = pread(fds[i], slot, stride, 0);
        } while (got < 0 && errno == EINTR);
        if (got < 0) {
            lens[i] = -errno;
            slot[0] = '\0';
        } else if ((size_t)got >= stride) {
            lens[i] = -EFBIG;
            slot[0] = '\0';
        } else {
            lens[i] = got;
            slot[got] = '\0';
        }
    }
    return 0;
}

int pn_read(int fd, char *buf, size_t size, ssize_t *len_out)
{
    ssize_t n;
    do {
        n = read(fd, buf, size);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        return -errno;
    *len_out = n;
    return 0;
}
