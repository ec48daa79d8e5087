/*
 * bindloop: the benchmark workload. socket + setsockopt(SO_REUSEADDR) + bind + close on
 * 127.0.0.1:PORT, in a fresh network namespace, pinned to one CPU.
 *
 * Why C and not a Rust subcommand: it has to run from any process (the xtask binary, a test
 * harness, the TCG guest) without depending on which executable started it, and gcc is on
 * every machine here. `cargo xtask bench` compiles it with -O2 at bench time.
 *
 * Usage: bindloop PORT CPU. Prints "ready PID" once the namespace is set up, then serves one
 * command per stdin line and answers with one line "ok BINDS NS ERRORS":
 *   run N W       W untimed warm-up binds, then N timed binds as fast as possible
 *   pace RATE MS  binds at RATE per second for MS milliseconds, sleeping between binds when
 *                 there is time (so a paced loop leaves its CPU to others, like a real server)
 *   spin          binds as fast as possible until SIGUSR1
 *   getppid N W   W untimed, then N timed getppid() system calls (BINDS is then N): what a
 *                 tracer costs a process that never binds (syscall tracepoints put every
 *                 task on the kernel's slow syscall path)
 *   connect N W   W untimed, then N timed successful connect()s to a listener on
 *                 127.0.0.1:PORT+1 in the same namespace, each accepted and both ends closed
 *                 (BINDS is then N): what a tracer costs connect(), which portwatch hooks too
 *                 but reports only when it fails for want of a port. The client closes with
 *                 SO_LINGER 0 (a reset), so no TIME_WAIT piles up in the range.
 * EOF or "quit" exits.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <net/if.h>
#include <netinet/in.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static struct sockaddr_in addr;
static struct sockaddr_in server_addr;
static int listener = -1;
static unsigned long errors;
static volatile sig_atomic_t stop;

static void on_usr1(int sig) { (void)sig; stop = 1; }

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void one_bind(void) {
    int one = 1;
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) { errors++; return; }
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) != 0) errors++;
    close(fd);
}

/* The connect loop's listener, made on first use. */
static int ensure_listener(void) {
    if (listener >= 0) return 0;
    int one = 1;
    listener = socket(AF_INET, SOCK_STREAM, 0);
    if (listener < 0) return -1;
    setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(listener, (struct sockaddr *)&server_addr, sizeof server_addr) != 0) return -1;
    return listen(listener, 4096);
}

static void one_connect(void) {
    struct linger off = {1, 0};
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) { errors++; return; }
    setsockopt(fd, SOL_SOCKET, SO_LINGER, &off, sizeof off);
    if (connect(fd, (struct sockaddr *)&server_addr, sizeof server_addr) != 0) {
        errors++;
        close(fd);
        return;
    }
    int a = accept(listener, NULL, NULL);
    close(fd);
    if (a >= 0) close(a); else errors++;
}

/* syscall(2), so no libc may answer from a cache without entering the kernel. */
static void one_getppid(void) { syscall(SYS_getppid); }

static int die(const char *what) { perror(what); return 1; }

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: bindloop PORT CPU\n"); return 2; }
    addr.sin_family = AF_INET;
    addr.sin_port = htons((unsigned short)atoi(argv[1]));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    server_addr = addr;
    server_addr.sin_port = htons((unsigned short)(atoi(argv[1]) + 1));

    if (unshare(CLONE_NEWNET) != 0) return die("unshare(CLONE_NEWNET)");
    int s = socket(AF_INET, SOCK_DGRAM, 0);
    struct ifreq ifr;
    memset(&ifr, 0, sizeof ifr);
    strcpy(ifr.ifr_name, "lo");
    if (s < 0 || ioctl(s, SIOCGIFFLAGS, &ifr) != 0) return die("SIOCGIFFLAGS lo");
    ifr.ifr_flags |= IFF_UP;
    if (ioctl(s, SIOCSIFFLAGS, &ifr) != 0) return die("SIOCSIFFLAGS lo");
    close(s);

    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(atoi(argv[2]), &set);
    if (sched_setaffinity(0, sizeof set, &set) != 0) return die("sched_setaffinity");
    signal(SIGUSR1, on_usr1);
    /* Sleeps in "pace" end when asked, not up to 50 µs later. */
    prctl(PR_SET_TIMERSLACK, 1UL);

    printf("ready %d\n", (int)getpid());
    fflush(stdout);
    char line[128];
    while (fgets(line, sizeof line, stdin)) {
        unsigned long n = 0, w = 0, binds = 0;
        long long t0, t1;
        double rate;
        errors = 0;
        if (sscanf(line, "run %lu %lu", &n, &w) == 2) {
            for (unsigned long i = 0; i < w; i++) one_bind();
            t0 = now_ns();
            for (unsigned long i = 0; i < n; i++) one_bind();
            t1 = now_ns();
            binds = n;
        } else if (sscanf(line, "getppid %lu %lu", &n, &w) == 2) {
            for (unsigned long i = 0; i < w; i++) one_getppid();
            t0 = now_ns();
            for (unsigned long i = 0; i < n; i++) one_getppid();
            t1 = now_ns();
            binds = n;
        } else if (sscanf(line, "connect %lu %lu", &n, &w) == 2) {
            if (ensure_listener() != 0) {
                printf("error listener: %s\n", strerror(errno));
                fflush(stdout);
                continue;
            }
            for (unsigned long i = 0; i < w; i++) one_connect();
            t0 = now_ns();
            for (unsigned long i = 0; i < n; i++) one_connect();
            t1 = now_ns();
            binds = n;
        } else if (sscanf(line, "pace %lf %lu", &rate, &n) == 2) {
            double gap = 1e9 / rate;
            t0 = now_ns();
            long long end = t0 + (long long)n * 1000000LL;
            for (;;) {
                long long next = t0 + (long long)(gap * (double)binds);
                long long t;
                while ((t = now_ns()) < next) {
                    if (next - t > 10000) {
                        struct timespec ts = {next / 1000000000LL, next % 1000000000LL};
                        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL);
                    }
                }
                if (t >= end) break;
                one_bind();
                binds++;
            }
            t1 = now_ns();
        } else if (strncmp(line, "spin", 4) == 0) {
            stop = 0;
            t0 = now_ns();
            while (!stop) { one_bind(); binds++; }
            t1 = now_ns();
        } else if (strncmp(line, "quit", 4) == 0) {
            break;
        } else {
            printf("error unknown command\n");
            fflush(stdout);
            continue;
        }
        printf("ok %lu %lld %lu\n", binds, t1 - t0, errors);
        fflush(stdout);
    }
    return 0;
}
