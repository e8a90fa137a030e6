/* Load generator and servers for `make bench` (tests/bench/run_bench.py).
 *
 * Written in C so that neither the client nor the server is the bottleneck
 * of a relay measurement (the harness also runs them back to back, without a
 * relay, as a reference line).
 *
 *   benchtool push ADDR BYTES     connect, send BYTES, shutdown(SHUT_WR), wait for the
 *                                 sink's 8-byte count; prints "BYTES NS" (from connect)
 *   benchtool rate ADDR N [P]     N x (connect, send 16 bytes, read the 16-byte echo,
 *                                 close), one after the other, in each of P processes
 *                                 at once (default 1); prints "N NS" (N in all)
 *   benchtool bulk ADDR           one download from the echo server (it streams to a
 *                                 connection that starts with "STREAM\n"), read as fast
 *                                 as it can until killed; prints "ready" at the first bytes
 *   benchtool fair ADDR N         N exchanges without, N while a `bulk` child streams, N
 *                                 without; prints "N NS_WITHOUT NS_WITH" (mean without)
 *   benchtool hold ADDR N         N connections, one echo exchange on each, all kept
 *                                 open; prints "held N", exits at EOF on stdin
 *   benchtool sink ADDR           accept, count bytes to EOF, answer the count, close
 *   benchtool echo ADDR           epoll echo server, 4 worker processes (any number of
 *                                 connections, any amount of data: it stops reading a
 *                                 connection whose echo the client does not take)
 *
 * ADDR is tcp:A.B.C.D:PORT or unix:PATH. Servers print "ready PORT\n" on stdout
 * once listening (PORT is the bound port, 0 for unix). Clients retry connect
 * for up to 5 s on ECONNREFUSED/ENOENT (a relay started at the same time as the
 * client may not listen yet); the retries are not timed.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/wait.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#define CHUNK (1 << 20)
#define MSG 16
/* Sent first by `bulk`: the echo server then streams to it instead of echoing. */
#define STREAM_REQUEST "STREAM\n"

static void die(const char *what) {
    fprintf(stderr, "benchtool: %s: %s\n", what, strerror(errno));
    exit(1);
}

static void fail(const char *what) {
    fprintf(stderr, "benchtool: %s\n", what);
    exit(1);
}

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

struct addr {
    int family;
    struct sockaddr_storage ss;
    socklen_t len;
};

static void parse_addr(const char *text, struct addr *a) {
    memset(a, 0, sizeof *a);
    if (strncmp(text, "unix:", 5) == 0) {
        struct sockaddr_un *un = (struct sockaddr_un *)&a->ss;
        if (strlen(text + 5) >= sizeof un->sun_path) fail("unix path too long");
        un->sun_family = AF_UNIX;
        strcpy(un->sun_path, text + 5);
        a->family = AF_UNIX;
        a->len = sizeof *un;
    } else if (strncmp(text, "tcp:", 4) == 0) {
        char host[64];
        const char *colon = strrchr(text + 4, ':');
        if (!colon || (size_t)(colon - (text + 4)) >= sizeof host) fail("bad tcp address");
        memcpy(host, text + 4, colon - (text + 4));
        host[colon - (text + 4)] = 0;
        struct sockaddr_in *in = (struct sockaddr_in *)&a->ss;
        in->sin_family = AF_INET;
        in->sin_port = htons((uint16_t)atoi(colon + 1));
        if (inet_pton(AF_INET, host, &in->sin_addr) != 1) fail("bad IPv4 address");
        a->family = AF_INET;
        a->len = sizeof *in;
    } else {
        fail("address must be tcp:HOST:PORT or unix:PATH");
    }
}

static int try_connect(const struct addr *a) {
    int fd = socket(a->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    if (connect(fd, (const struct sockaddr *)&a->ss, a->len) == 0) return fd;
    int saved = errno;
    close(fd);
    errno = saved;
    return -1;
}

static int connect_retry(const struct addr *a) {
    uint64_t deadline = now_ns() + 5000000000ull;
    for (;;) {
        int fd = try_connect(a);
        if (fd >= 0) return fd;
        if ((errno != ECONNREFUSED && errno != ENOENT) || now_ns() > deadline) die("connect");
        usleep(1000);
    }
}

static int listen_on(const struct addr *a, int *port) {
    int fd = socket(a->family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) die("socket");
    int one = 1;
    if (a->family == AF_INET) setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (const struct sockaddr *)&a->ss, a->len) < 0) die("bind");
    if (listen(fd, 4096) < 0) die("listen");
    *port = 0;
    if (a->family == AF_INET) {
        struct sockaddr_in in;
        socklen_t len = sizeof in;
        if (getsockname(fd, (struct sockaddr *)&in, &len) < 0) die("getsockname");
        *port = ntohs(in.sin_port);
    }
    return fd;
}

static void write_all(int fd, const char *buf, size_t len) {
    while (len) {
        ssize_t n = write(fd, buf, len);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("write");
        }
        buf += n;
        len -= (size_t)n;
    }
}

static size_t read_full(int fd, char *buf, size_t len) {
    size_t got = 0;
    while (got < len) {
        ssize_t n = read(fd, buf + got, len - got);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("read");
        }
        if (n == 0) break;
        got += (size_t)n;
    }
    return got;
}

static int push(const char *target, unsigned long long bytes) {
    struct addr a;
    parse_addr(target, &a);
    char *buf = malloc(CHUNK);
    if (!buf) fail("out of memory");
    memset(buf, 'x', CHUNK);
    int fd = connect_retry(&a);
    uint64_t start = now_ns();
    unsigned long long left = bytes;
    while (left) {
        size_t n = left < CHUNK ? (size_t)left : CHUNK;
        write_all(fd, buf, n);
        left -= n;
    }
    if (shutdown(fd, SHUT_WR) < 0) die("shutdown");
    uint64_t count = 0;
    if (read_full(fd, (char *)&count, sizeof count) != sizeof count) fail("sink closed without acknowledging");
    uint64_t elapsed = now_ns() - start;
    if (count != bytes) {
        fprintf(stderr, "benchtool: sink counted %llu bytes, sent %llu\n", (unsigned long long)count, bytes);
        return 1;
    }
    printf("%llu %llu\n", bytes, (unsigned long long)elapsed);
    return 0;
}

static void one_exchange(const struct addr *a, int retry) {
    static const char msg[MSG] = "0123456789abcdef";
    char back[MSG];
    int fd = retry ? connect_retry(a) : try_connect(a);
    if (fd < 0) die("connect");
    write_all(fd, msg, MSG);
    if (read_full(fd, back, MSG) != MSG || memcmp(back, msg, MSG) != 0) fail("echo mismatch or early close");
    close(fd);
}

static int rate(const char *target, long n, long procs) {
    struct addr a;
    parse_addr(target, &a);
    one_exchange(&a, 1); /* waits for the relay to listen; not timed */
    if (procs < 1) procs = 1;
    uint64_t start = now_ns();
    if (procs == 1) {
        for (long i = 0; i < n; i++) one_exchange(&a, 0);
    } else {
        for (long p = 0; p < procs; p++) {
            pid_t pid = fork();
            if (pid < 0) die("fork");
            if (pid == 0) {
                for (long i = p; i < n; i += procs) one_exchange(&a, 0);
                _exit(0);
            }
        }
        for (long p = 0; p < procs; p++) {
            int status;
            if (wait(&status) < 0) die("wait");
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) fail("a client process failed");
        }
    }
    uint64_t elapsed = now_ns() - start;
    printf("%ld %llu\n", n, (unsigned long long)elapsed);
    return 0;
}

static _Noreturn void bulk(const char *target) {
    struct addr a;
    parse_addr(target, &a);
    char *in = malloc(CHUNK);
    if (!in) fail("out of memory");
    int fd = connect_retry(&a);
    write_all(fd, STREAM_REQUEST, strlen(STREAM_REQUEST));
    int announced = 0;
    for (;;) {
        ssize_t r = read(fd, in, CHUNK);
        if (r == 0) fail("the echo server closed the bulk connection");
        if (r < 0) {
            if (errno == EINTR) continue;
            die("read");
        }
        if (!announced) {
            printf("ready\n");
            fflush(stdout);
            announced = 1;
        }
    }
}

static uint64_t timed_exchanges(const struct addr *a, long n) {
    uint64_t start = now_ns();
    for (long i = 0; i < n; i++) one_exchange(a, 0);
    return now_ns() - start;
}

/* Short-connection rate while one bulk download streams through the same
 * address, and without it: N connections without, N with, N without again
 * (the two runs without bracket the one with, so a drift of the machine
 * or a warm-up weighs on both sides); prints "N NS_WITHOUT NS_WITH" with
 * NS_WITHOUT the mean of the two. The download runs in a child, flowing
 * before the second run starts and killed after it. */
static int fair(const char *target, long n) {
    struct addr a;
    parse_addr(target, &a);
    one_exchange(&a, 1);
    uint64_t without = timed_exchanges(&a, n);
    int ready[2];
    if (pipe(ready) < 0) die("pipe");
    pid_t pid = fork();
    if (pid < 0) die("fork");
    if (pid == 0) {
        if (dup2(ready[1], 1) < 0) die("dup2");
        close(ready[0]);
        bulk(target);
        _exit(1);
    }
    close(ready[1]);
    char line[16];
    if (read(ready[0], line, sizeof line) <= 0) fail("the bulk download did not start");
    uint64_t with = timed_exchanges(&a, n);
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    without = (without + timed_exchanges(&a, n)) / 2;
    printf("%ld %llu %llu\n", n, (unsigned long long)without, (unsigned long long)with);
    return 0;
}

static int hold(const char *target, long n) {
    struct addr a;
    parse_addr(target, &a);
    static const char msg[MSG] = "0123456789abcdef";
    char back[MSG];
    for (long i = 0; i < n; i++) {
        int fd = connect_retry(&a);
        write_all(fd, msg, MSG);
        if (read_full(fd, back, MSG) != MSG) fail("echo mismatch or early close");
    }
    printf("held %ld\n", n);
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {
    }
    return 0;
}

static _Noreturn void sink(const char *target) {
    struct addr a;
    int port;
    parse_addr(target, &a);
    int lfd = listen_on(&a, &port);
    printf("ready %d\n", port);
    fflush(stdout);
    char *buf = malloc(CHUNK);
    if (!buf) fail("out of memory");
    for (;;) {
        int c = accept4(lfd, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            die("accept");
        }
        uint64_t count = 0;
        for (;;) {
            ssize_t n = read(c, buf, CHUNK);
            if (n < 0) {
                if (errno == EINTR) continue;
                break;
            }
            if (n == 0) break;
            count += (uint64_t)n;
        }
        (void)!write(c, &count, sizeof count);
        close(c);
    }
}

/* One echo connection: bytes read and not yet written back. While some are
 * pending it waits for EPOLLOUT and reads nothing more (backpressure). */
struct echo_conn {
    int fd;
    int streaming; /* asked for a stream: written to until it goes away */
    size_t off, len;
    char buf[65536];
};

static void echo_close(int ep, struct echo_conn *c) {
    epoll_ctl(ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    free(c);
}

/* One turn of a connection: write what is pending, else read at most one
 * buffer and write it back. One turn per event, so a bulk connection costs
 * the server no more per round than a short one (the relays' fairness is
 * measured through this server). */
static void echo_step(int ep, struct echo_conn *c) {
    if (c->streaming) {
        ssize_t w = write(c->fd, c->buf, sizeof c->buf);
        if (w < 0 && errno != EAGAIN && errno != EINTR) echo_close(ep, c);
        return;
    }
    if (c->off == c->len) {
        ssize_t r = read(c->fd, c->buf, sizeof c->buf);
        if (r < 0 && (errno == EAGAIN || errno == EINTR)) return;
        if (r <= 0) {
            echo_close(ep, c); /* EOF or error */
            return;
        }
        if ((size_t)r >= strlen(STREAM_REQUEST) && memcmp(c->buf, STREAM_REQUEST, strlen(STREAM_REQUEST)) == 0) {
            c->streaming = 1;
            memset(c->buf, 's', sizeof c->buf);
            struct epoll_event ev = {.events = EPOLLOUT, .data.ptr = c};
            epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
            return;
        }
        c->off = 0;
        c->len = (size_t)r;
    }
    ssize_t w = write(c->fd, c->buf + c->off, c->len - c->off);
    if (w < 0 && errno != EAGAIN && errno != EINTR) {
        echo_close(ep, c);
        return;
    }
    if (w > 0) c->off += (size_t)w;
    struct epoll_event ev = {.events = c->off < c->len ? EPOLLOUT : EPOLLIN, .data.ptr = c};
    epoll_ctl(ep, EPOLL_CTL_MOD, c->fd, &ev);
}

/* A worker: its own epoll set, the shared listener added with EPOLLEXCLUSIVE
 * (one worker woken per connection; a worker busy with a bulk connection is
 * seldom the one waiting). */
static void echo_worker(int lfd) {
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) die("epoll_create1");
    struct epoll_event ev = {.events = EPOLLIN | EPOLLEXCLUSIVE, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev) < 0) die("epoll_ctl");
    struct epoll_event events[256];
    for (;;) {
        int n = epoll_wait(ep, events, 256, -1);
        if (n < 0) {
            if (errno == EINTR) continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct echo_conn *c = events[i].data.ptr;
            if (c != NULL) {
                echo_step(ep, c);
                continue;
            }
            for (int k = 0; k < 16; k++) {
                int fd = accept4(lfd, NULL, NULL, SOCK_CLOEXEC | SOCK_NONBLOCK);
                if (fd < 0) break;
                struct echo_conn *nc = malloc(sizeof *nc);
                if (!nc) fail("out of memory");
                nc->fd = fd;
                nc->streaming = 0;
                nc->off = nc->len = 0;
                struct epoll_event cev = {.events = EPOLLIN, .data.ptr = nc};
                if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &cev) < 0) {
                    close(fd);
                    free(nc);
                }
            }
        }
    }
}

#define ECHO_WORKERS 4

static int echo(const char *target) {
    struct addr a;
    int port;
    parse_addr(target, &a);
    int lfd = listen_on(&a, &port);
    if (fcntl(lfd, F_SETFL, O_NONBLOCK) < 0) die("fcntl");
    printf("ready %d\n", port);
    fflush(stdout);
    /* Workers die with this process (the harness kills its process group). */
    for (int w = 1; w < ECHO_WORKERS; w++) {
        pid_t pid = fork();
        if (pid < 0) die("fork");
        if (pid == 0) echo_worker(lfd);
    }
    echo_worker(lfd);
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGPIPE, SIG_IGN);
    if (argc == 4 && strcmp(argv[1], "push") == 0) return push(argv[2], strtoull(argv[3], NULL, 10));
    if (argc == 4 && strcmp(argv[1], "rate") == 0) return rate(argv[2], strtol(argv[3], NULL, 10), 1);
    if (argc == 5 && strcmp(argv[1], "rate") == 0) return rate(argv[2], strtol(argv[3], NULL, 10), strtol(argv[4], NULL, 10));
    if (argc == 3 && strcmp(argv[1], "bulk") == 0) bulk(argv[2]);
    if (argc == 4 && strcmp(argv[1], "fair") == 0) return fair(argv[2], strtol(argv[3], NULL, 10));
    if (argc == 4 && strcmp(argv[1], "hold") == 0) return hold(argv[2], strtol(argv[3], NULL, 10));
    if (argc == 3 && strcmp(argv[1], "sink") == 0) sink(argv[2]);
    if (argc == 3 && strcmp(argv[1], "echo") == 0) return echo(argv[2]);
    fprintf(stderr, "usage: benchtool push ADDR BYTES | rate ADDR N [P] | bulk ADDR | fair ADDR N | hold ADDR N | sink|echo ADDR\n");
    return 2;
}
