/* A fake libnvidia-ml.so.1 for tests: the NVML calls wattgate's agent uses, compiled against the
 * real nvml.h (so a wrong prototype fails to build), with its state in a text file.
 *
 * State file (path in FAKE_NVML_STATE), one record per line, re-read and rewritten on every call
 * so a test can read the locked clocks from outside and change behaviour mid-run. Calls are
 * serialised by an flock on STATE.lock; the new state is written to STATE.tmp and renamed over
 * STATE, so a process killed mid-call (SIGKILL) never leaves the file empty or half written:
 *   deny_lock 0|1          1: Set/ResetGpuLockedClocks return NVML_ERROR_NO_PERMISSION
 *   fail NAME CODE         the call NAME (e.g. nvmlDeviceGetPowerUsage) returns CODE
 *   gpu IDX LOCKED_MHZ ENERGY_MJ LAST_NS    LOCKED_MHZ 0 = not locked
 * A missing file starts with FAKE_NVML_GPUS GPUs (default 2), nothing locked.
 * Model: SM clock = locked clock or 1980 MHz; power = 60 W + 640 W * (clock / 1980)^3;
 * the energy counter integrates that power over CLOCK_MONOTONIC time.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "nvml.h"

#define MAX_GPUS 16
#define MAX_FAILS 16
#define MAX_CLOCK 1980
#define MIN_CLOCK 210
#define CLOCK_STEP 15
#define MEM_CLOCK 2619

typedef struct {
    unsigned int locked;
    unsigned long long energy_mj;
    long long last_ns;
} gpu_t;

typedef struct {
    int deny_lock;
    int n_fail;
    char fail_name[MAX_FAILS][64];
    int fail_code[MAX_FAILS];
    int n_gpus;
    gpu_t gpus[MAX_GPUS];
} state_t;

static int g_initialised = 0;

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long long)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static const char *state_path(void) {
    const char *p = getenv("FAKE_NVML_STATE");
    return p ? p : "/tmp/fake_nvml_state";
}

static double power_w(unsigned int clock) {
    double x = (double)clock / MAX_CLOCK;
    return 60.0 + 640.0 * x * x * x;
}

static unsigned int sm_clock(const gpu_t *g) { return g->locked ? g->locked : MAX_CLOCK; }

static void default_state(state_t *s) {
    const char *n = getenv("FAKE_NVML_GPUS");
    memset(s, 0, sizeof(*s));
    s->n_gpus = n ? atoi(n) : 2;
    if (s->n_gpus < 0 || s->n_gpus > MAX_GPUS) s->n_gpus = 2;
    for (int i = 0; i < s->n_gpus; i++) s->gpus[i].last_ns = now_ns();
}

static void parse(FILE *f, state_t *s) {
    char line[256];
    memset(s, 0, sizeof(*s));
    while (fgets(line, sizeof line, f)) {
        char name[64];
        int a;
        unsigned int locked;
        unsigned long long e;
        long long t;
        if (sscanf(line, "deny_lock %d", &a) == 1) {
            s->deny_lock = a;
        } else if (sscanf(line, "fail %63s %d", name, &a) == 2 && s->n_fail < MAX_FAILS) {
            strcpy(s->fail_name[s->n_fail], name);
            s->fail_code[s->n_fail++] = a;
        } else if (sscanf(line, "gpu %d %u %llu %lld", &a, &locked, &e, &t) == 4 && a == s->n_gpus && a < MAX_GPUS) {
            s->gpus[a].locked = locked;
            s->gpus[a].energy_mj = e;
            s->gpus[a].last_ns = t ? t : now_ns();
            s->n_gpus++;
        }
    }
}

static int path_with(char *out, size_t size, const char *suffix) {
    return snprintf(out, size, "%s%s", state_path(), suffix) < (int)size ? 0 : -1;
}

/* Write the whole state to STATE.tmp, then rename it over STATE (atomic for every reader). */
static void write_state(const state_t *s) {
    char buf[4096], tmp[4096];
    int n = snprintf(buf, sizeof buf, "deny_lock %d\n", s->deny_lock);
    for (int i = 0; i < s->n_fail; i++)
        n += snprintf(buf + n, sizeof buf - n, "fail %s %d\n", s->fail_name[i], s->fail_code[i]);
    for (int i = 0; i < s->n_gpus; i++)
        n += snprintf(buf + n, sizeof buf - n, "gpu %d %u %llu %lld\n", i, s->gpus[i].locked,
                      s->gpus[i].energy_mj, s->gpus[i].last_ns);
    if (path_with(tmp, sizeof tmp, ".tmp") != 0) {
        fprintf(stderr, "fake_nvml: state path too long\n");
        return;
    }
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        perror("fake_nvml write");
        return;
    }
    int ok = write(fd, buf, n) == n;
    if (close(fd) != 0) ok = 0;
    if (!ok || rename(tmp, state_path()) != 0) perror("fake_nvml write");
}

/* Take the lock (STATE.lock), load the state, and advance every energy counter to now.
 * Returns the lock's descriptor for end(), or -1. */
static int begin(state_t *s) {
    char lock[4096];
    if (path_with(lock, sizeof lock, ".lock") != 0) return -1;
    int fd = open(lock, O_RDWR | O_CREAT, 0644);
    if (fd < 0) return -1;
    flock(fd, LOCK_EX);
    FILE *f = fopen(state_path(), "r");
    long size = 0;
    if (f) {
        fseek(f, 0, SEEK_END);
        size = ftell(f);
        rewind(f);
        if (size > 0) parse(f, s);
        fclose(f);
    }
    if (size <= 0) default_state(s);
    long long t = now_ns();
    for (int i = 0; i < s->n_gpus; i++) {
        gpu_t *g = &s->gpus[i];
        double dt_s = (double)(t - g->last_ns) / 1e9;
        if (dt_s > 0) g->energy_mj += (unsigned long long)(power_w(sm_clock(g)) * dt_s * 1000.0);
        g->last_ns = t;
    }
    return fd;
}

static void end(int fd, const state_t *s) {
    write_state(s);
    flock(fd, LOCK_UN);
    close(fd);
}

static nvmlReturn_t injected(const state_t *s, const char *name) {
    for (int i = 0; i < s->n_fail; i++)
        if (strcmp(s->fail_name[i], name) == 0) return (nvmlReturn_t)s->fail_code[i];
    return NVML_SUCCESS;
}

static int dev_index(nvmlDevice_t d) { return (int)((uintptr_t)d) - 1; }

/* Common prologue: load state, check init, the device and injected failures. */
#define ENTER(dev)                                                         \
    state_t s;                                                             \
    if (!g_initialised) return NVML_ERROR_UNINITIALIZED;                   \
    int fd = begin(&s);                                                    \
    if (fd < 0) return NVML_ERROR_UNKNOWN;                                 \
    int idx = dev_index(dev);                                              \
    if (idx < 0 || idx >= s.n_gpus) {                                      \
        end(fd, &s);                                                       \
        return NVML_ERROR_INVALID_ARGUMENT;                                \
    }                                                                      \
    nvmlReturn_t rc = injected(&s, __func__);                              \
    if (rc != NVML_SUCCESS) {                                              \
        end(fd, &s);                                                       \
        return rc;                                                         \
    }                                                                      \
    gpu_t *g = &s.gpus[idx];                                               \
    (void)g;

nvmlReturn_t DECLDIR nvmlInitWithFlags(unsigned int flags) {
    (void)flags;
    state_t s;
    int fd = begin(&s);
    if (fd < 0) return NVML_ERROR_UNKNOWN;
    nvmlReturn_t rc = injected(&s, __func__);
    end(fd, &s);
    if (rc == NVML_SUCCESS) g_initialised = 1;
    return rc;
}

nvmlReturn_t DECLDIR nvmlInit_v2(void) { return nvmlInitWithFlags(0); }

nvmlReturn_t DECLDIR nvmlShutdown(void) {
    if (!g_initialised) return NVML_ERROR_UNINITIALIZED;
    g_initialised = 0;
    return NVML_SUCCESS;
}

const DECLDIR char *nvmlErrorString(nvmlReturn_t result) {
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    default: return "Unknown Error";
    }
}

nvmlReturn_t DECLDIR nvmlDeviceGetCount_v2(unsigned int *deviceCount) {
    if (!g_initialised) return NVML_ERROR_UNINITIALIZED;
    state_t s;
    int fd = begin(&s);
    if (fd < 0) return NVML_ERROR_UNKNOWN;
    *deviceCount = (unsigned int)s.n_gpus;
    end(fd, &s);
    return NVML_SUCCESS;
}

nvmlReturn_t DECLDIR nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device) {
    ENTER((nvmlDevice_t)(uintptr_t)(index + 1));
    *device = (nvmlDevice_t)(uintptr_t)(idx + 1);
    end(fd, &s);
    return NVML_SUCCESS;
}

nvmlReturn_t DECLDIR nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index) {
    ENTER(device);
    *index = (unsigned int)idx;
    end(fd, &s);
    return NVML_SUCCESS;
}

nvmlReturn_t DECLDIR nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length) {
    ENTER(device);
    snprintf(name, length, "Fake NVIDIA H100 80GB HBM3");
    end(fd, &s);
    return NVML_SUCCESS;
}

nvmlReturn_t DECLDIR nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length) {
    ENTER(device);
    snprintf(uuid, length, "GPU-fa4e0000-0000-0000-0000-%012d", idx);
    end(fd, &s);
    return NVML_SUCCESS;
}

nvmlReturn_t DECLDIR nvmlDeviceGetPowerUsage(nvmlDevice_t device, unsigned int *power) {
    ENTER(device);
    *power = (unsigned int)(power_w(sm_clock(g)) * 1000.0);
    end(fd, &s);
    return NVML_SUCCESS;
}

nvmlReturn_t DECLDIR nvmlDeviceGetTotalEnergyConsumption(nvmlDevice_t device, unsigned long long *energy) {
    ENTER(device);
    *energy = g->energy_mj;
    end(fd, &s);
    return NVML_SUCCESS;
}

nvmlReturn_t DECLDIR nvmlDeviceGetClockInfo(nvmlDevice_t device, nvmlClockType_t type, unsigned int *clock) {
    ENTER(device);
    if (type == NVML_CLOCK_GRAPHICS || type == NVML_CLOCK_SM) {
        *clock = sm_clock(g);
    } else if (type == NVML_CLOCK_MEM) {
        *clock = MEM_CLOCK;
    } else {
        rc = NVML_ERROR_NOT_SUPPORTED;
    }
    end(fd, &s);
    return rc;
}

nvmlReturn_t DECLDIR nvmlDeviceGetSupportedGraphicsClocks(nvmlDevice_t device, unsigned int memoryClockMHz,
                                                          unsigned int *count, unsigned int *clocksMHz) {
    ENTER(device);
    unsigned int n = (MAX_CLOCK - MIN_CLOCK) / CLOCK_STEP + 1;
    if (memoryClockMHz != MEM_CLOCK) {
        rc = NVML_ERROR_NOT_FOUND;
    } else if (clocksMHz == NULL || *count < n) {
        *count = n;
        rc = NVML_ERROR_INSUFFICIENT_SIZE;
    } else {
        for (unsigned int i = 0; i < n; i++) clocksMHz[i] = MAX_CLOCK - i * CLOCK_STEP; /* descending, like NVML */
        *count = n;
    }
    end(fd, &s);
    return rc;
}

static int supported(unsigned int mhz) {
    return mhz >= MIN_CLOCK && mhz <= MAX_CLOCK && (MAX_CLOCK - mhz) % CLOCK_STEP == 0;
}

nvmlReturn_t DECLDIR nvmlDeviceSetGpuLockedClocks(nvmlDevice_t device, unsigned int minGpuClockMHz,
                                                  unsigned int maxGpuClockMHz) {
    ENTER(device);
    if (s.deny_lock) {
        rc = NVML_ERROR_NO_PERMISSION;
    } else if (minGpuClockMHz != maxGpuClockMHz || !supported(minGpuClockMHz)) {
        rc = NVML_ERROR_INVALID_ARGUMENT;
    } else {
        g->locked = minGpuClockMHz;
    }
    end(fd, &s);
    return rc;
}

nvmlReturn_t DECLDIR nvmlDeviceResetGpuLockedClocks(nvmlDevice_t device) {
    ENTER(device);
    if (s.deny_lock) {
        rc = NVML_ERROR_NO_PERMISSION;
    } else {
        g->locked = 0;
    }
    end(fd, &s);
    return rc;
}
