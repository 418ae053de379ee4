/*
 * The handshake storm's load client in C (bench_handshake_offload.py --client c).
 *
 *     storm_client HOST PORT CLIENTS CAFILE SERVER_NAME
 *
 * One thread, epoll, CLIENTS connections in flight. Each connection: a
 * non-blocking TCP connect, a full TLS 1.3 handshake verifying the server's
 * certificate chain and name, one close_notify, close; then the next one.
 *
 * Protocol with the driver (the same as the Python load clients): print
 * "ready", read one line "START END" (time.monotonic() instants, which is
 * CLOCK_MONOTONIC on Linux), storm until END, finish the handshakes in flight
 * (60 s at most), print one JSON line: handshakes completed inside the window,
 * all handshakes, connection errors, and this process's CPU seconds (user +
 * system) inside the window.
 *
 * Why C: the Python load clients cost about 540-700 us of CPU per RSA-2048
 * handshake on the benchmark machine's 2 cores, which the server then cannot
 * use; this one costs what OpenSSL's client side and the TCP calls cost
 * (about 430-510 us there).
 */

#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define FINISH_SECONDS 60.0

struct conn {
    int fd;
    SSL *ssl;
    int connected; /* the TCP connect has completed */
};

static SSL_CTX *ctx;
static struct sockaddr_in server;
static const char *server_name;
static int epfd;
static long handshakes_in_window, handshakes_total, errors;
static double window_start, window_end;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_seconds(void) {
    struct rusage usage;
    getrusage(RUSAGE_SELF, &usage);
    return (double)usage.ru_utime.tv_sec + (double)usage.ru_utime.tv_usec / 1e6 +
           (double)usage.ru_stime.tv_sec + (double)usage.ru_stime.tv_usec / 1e6;
}

static void fail(const char *what) {
    fprintf(stderr, "storm_client: %s: %s\n", what, strerror(errno));
    ERR_print_errors_fp(stderr);
    exit(2);
}

static void watch(struct conn *c, uint32_t events, int op) {
    struct epoll_event ev = {.events = events, .data.ptr = c};
    if (epoll_ctl(epfd, op, c->fd, &ev) < 0) fail("epoll_ctl");
}

static void start(struct conn *c) {
    c->fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
    if (c->fd < 0) fail("socket");
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    c->ssl = NULL;
    c->connected = 0;
    if (connect(c->fd, (struct sockaddr *)&server, sizeof server) < 0 && errno != EINPROGRESS)
        fail("connect");
    watch(c, EPOLLOUT, EPOLL_CTL_ADD);
}

static void finish(struct conn *c, int ok) {
    if (c->ssl != NULL) {
        if (ok) SSL_shutdown(c->ssl); /* close_notify; no wait for the server's */
        SSL_free(c->ssl);
    }
    close(c->fd); /* also removes it from the epoll set */
    c->fd = -1;
    if (!ok) errors++;
    ERR_clear_error();
}

/* Advance one connection; returns 1 when it is finished (either way). */
static int step(struct conn *c) {
    if (!c->connected) {
        int error = 0;
        socklen_t length = sizeof error;
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &error, &length);
        if (error != 0) {
            finish(c, 0);
            return 1;
        }
        c->connected = 1;
        c->ssl = SSL_new(ctx);
        if (c->ssl == NULL) fail("SSL_new");
        SSL_set_fd(c->ssl, c->fd);
        SSL_set_tlsext_host_name(c->ssl, server_name);
        if (!SSL_set1_host(c->ssl, server_name)) fail("SSL_set1_host");
    }
    int result = SSL_connect(c->ssl);
    if (result == 1) {
        double done = now();
        if (SSL_session_reused(c->ssl)) {
            fprintf(stderr, "storm_client: a session was resumed: not a full handshake\n");
            exit(2);
        }
        handshakes_total++;
        if (done >= window_start && done < window_end) handshakes_in_window++;
        finish(c, 1);
        return 1;
    }
    switch (SSL_get_error(c->ssl, result)) {
    case SSL_ERROR_WANT_READ:
        watch(c, EPOLLIN, EPOLL_CTL_MOD);
        return 0;
    case SSL_ERROR_WANT_WRITE:
        watch(c, EPOLLOUT, EPOLL_CTL_MOD);
        return 0;
    default:
        finish(c, 0);
        return 1;
    }
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: storm_client HOST PORT CLIENTS CAFILE SERVER_NAME\n");
        return 2;
    }
    /* A write to a connection the server has reset must fail, not kill us. */
    signal(SIGPIPE, SIG_IGN);
    memset(&server, 0, sizeof server);
    server.sin_family = AF_INET;
    server.sin_port = htons((uint16_t)atoi(argv[2]));
    if (inet_pton(AF_INET, argv[1], &server.sin_addr) != 1) fail("inet_pton");
    int clients = atoi(argv[3]);
    server_name = argv[5];
    if (clients < 1) return 2;

    ctx = SSL_CTX_new(TLS_client_method());
    if (ctx == NULL) fail("SSL_CTX_new");
    SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION);
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
    if (SSL_CTX_load_verify_locations(ctx, argv[4], NULL) != 1) fail("CA file");

    printf("ready\n");
    fflush(stdout);
    if (scanf("%lf %lf", &window_start, &window_end) != 2) {
        fprintf(stderr, "storm_client: expected 'START END' on stdin\n");
        return 2;
    }

    epfd = epoll_create1(0);
    if (epfd < 0) fail("epoll_create1");
    struct conn *conns = calloc((size_t)clients, sizeof *conns);
    struct epoll_event *events = calloc((size_t)clients, sizeof *events);
    if (conns == NULL || events == NULL) fail("calloc");
    for (int i = 0; i < clients; i++) start(&conns[i]);

    double cpu_start = -1, cpu_end = -1;
    int in_flight = clients;
    while (in_flight > 0) {
        double t = now();
        if (cpu_start < 0 && t >= window_start) cpu_start = cpu_seconds();
        if (cpu_end < 0 && t >= window_end) cpu_end = cpu_seconds();
        if (t > window_end + FINISH_SECONDS) {
            fprintf(stderr, "storm_client: %d handshakes did not finish\n", in_flight);
            return 2;
        }
        /* Wake at the window's edges to read the CPU clock there. */
        double next = cpu_start < 0 ? window_start : cpu_end < 0 ? window_end : t + 1.0;
        int timeout = (int)((next - t) * 1000.0) + 1;
        int n = epoll_wait(epfd, events, clients, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            fail("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct conn *c = events[i].data.ptr;
            if (step(c)) {
                if (now() < window_end) start(c);
                else in_flight--;
            }
        }
    }
    if (cpu_start < 0) cpu_start = cpu_seconds();
    if (cpu_end < 0) cpu_end = cpu_seconds();
    printf("{\"handshakes\": %ld, \"total\": %ld, \"errors\": %ld, \"cpu_s\": %.6f}\n",
           handshakes_in_window, handshakes_total, errors, cpu_end - cpu_start);
    fflush(stdout);
    /* Wait for the driver to close stdin, as the Python load clients do. */
    char buffer[64];
    while (fread(buffer, 1, sizeof buffer, stdin) > 0) {
    }
    SSL_CTX_free(ctx);
    return 0;
}
