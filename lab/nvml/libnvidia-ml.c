/*
 * Copyright (c) gpufleet.inference contributors
 * GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
 *
 * A stand-in libnvidia-ml.so.1 for tests and the simulated lab: the real nvidia-ml-py
 * (pynvml) talks to it as it would to the driver's NVML, on a machine without a GPU.
 * Build: lab/nvml/build.sh OUTDIR (see lab/nvml/README.md).
 *
 * Every exported function also exists in the real 590.48.01 driver's library
 * (tests/fixtures/libnvidia-ml-590.48.01-exported-nvml-symbols.txt); everything else is
 * hidden (-fvisibility=hidden, EXPORT marks the exports).
 *
 * STATE FILE. Path in $GPUFLEET_NVML_STATE, read again on EVERY call (writers replace it by
 * rename, so a reader never sees half a file). One item per line, "key value"; blank lines
 * and lines starting with '#' are ignored; an unknown key or a bad value makes every call
 * fail with NVML_ERROR_UNKNOWN and a message on stderr naming the line.
 *
 *   Global lines (before the first "gpu" line):
 *     driver_version 590.48.01
 *     cuda_driver_version 13010           (1000 * major + 10 * minor)
 *     nvml_version 13.590.48.01           (default: "<cuda major>.<driver_version>")
 *     drain_delay 0.3                     (seconds a dead process's memory stays used; 0)
 *     procs_dir /path                     (registered processes; default "<state file>.d")
 *     fail <nvml function> <error code>   (that function returns that code, e.g.
 *                                          "fail nvmlInitWithFlags 9": driver not loaded)
 *   "gpu" starts a GPU (index = order of the "gpu" lines); the lines after it describe it:
 *     name NVIDIA RTX A5500
 *     uuid GPU-0d3f...
 *     pci_bus_id 00000000:01:00.0
 *     pci_device_id 0x223310de
 *     memory_total_mib 24564
 *     memory_reserved_mib 309
 *     memory_used_mib 0                   (static; registered processes add to it)
 *     compute_capability 8.6
 *     power_limit_mw 230000
 *     temperature_c 45
 *     utilization_gpu 3
 *     utilization_memory 1
 *     lost 1                              (every call on it, handle included: GPU_IS_LOST)
 *     unified 1                           (memory info: NOT_SUPPORTED, as on GB10)
 *     mig_mode 1                          (0 disabled, 1 enabled; absent: NOT_SUPPORTED)
 *     mig_device <gi> <ci> <total_mib> <used_mib> <uuid> <name...>
 *     process <pid> <used_mib or -> <name...>   (static; listed, not added to used)
 *     fail <nvml function> <error code>   (only calls on this GPU and its MIG devices)
 *     numa_node 0                         (topology: default 0)
 *     host_bridge 1                       (topology: an id; absent: a bridge of its own)
 *     pcie_switch 3                       (topology: an id; absent: a switch of its own)
 *     nvlink <peer pci bus id> <links> [switch]   (that many active NVLinks to the GPU, or
 *                                          with "switch" to the NVSwitch, at that bus id)
 *     nvlink_ports 12                     (NVLinks the GPU has; default: those of its nvlink
 *                                          lines; no nvlink line and no ports: no NVLink)
 *   A value that is absent makes its getter return NVML_ERROR_NOT_SUPPORTED.
 *
 * REGISTERED PROCESSES. A file "gpu<index>-<pid>" in procs_dir says that process holds
 * memory on that GPU. First token: MiB held. Optional lines: "name <text>",
 * "released_at <epoch seconds>" (written by the process when it frees its memory) and
 * "dead_since <epoch seconds>" (written here, by atomic rewrite, the first time the pid is
 * seen dead). Its MiB count as used while the pid is alive and not released, then for
 * drain_delay seconds after released_at / dead_since, then never again. It is listed by
 * nvmlDeviceGetComputeRunningProcesses* while it counts and its pid is alive.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define EXPORT __attribute__((visibility("default")))

typedef int nvmlReturn_t;

enum {
    NVML_SUCCESS = 0,
    NVML_ERROR_UNINITIALIZED = 1,
    NVML_ERROR_INVALID_ARGUMENT = 2,
    NVML_ERROR_NOT_SUPPORTED = 3,
    NVML_ERROR_NO_PERMISSION = 4,
    NVML_ERROR_ALREADY_INITIALIZED = 5,
    NVML_ERROR_NOT_FOUND = 6,
    NVML_ERROR_INSUFFICIENT_SIZE = 7,
    NVML_ERROR_DRIVER_NOT_LOADED = 9,
    NVML_ERROR_TIMEOUT = 10,
    NVML_ERROR_LIBRARY_NOT_FOUND = 12,
    NVML_ERROR_FUNCTION_NOT_FOUND = 13,
    NVML_ERROR_GPU_IS_LOST = 15,
    NVML_ERROR_RESET_REQUIRED = 16,
    NVML_ERROR_LIB_RM_VERSION_MISMATCH = 18,
    NVML_ERROR_MEMORY = 20,
    NVML_ERROR_ARGUMENT_VERSION_MISMATCH = 25,
    NVML_ERROR_UNKNOWN = 999
};

#define NVML_MEMORY_V2_VERSION 0x02000028u /* sizeof(nvmlMemory_v2_t) | 2 << 24 */
#define NVML_VALUE_NOT_AVAILABLE_ULL 0xFFFFFFFFFFFFFFFFULL
#define NVML_INSTANCE_NONE 0xFFFFFFFFu
#define NVML_NVLINK_MAX_LINKS 36 /* nvml.h of the 590 driver */
#define MAX_NVLINK_PEERS 16

/* nvmlGpuTopologyLevel_t (nvml.h) */
enum {
    NVML_TOPOLOGY_SINGLE = 10,
    NVML_TOPOLOGY_HOSTBRIDGE = 30,
    NVML_TOPOLOGY_NODE = 40,
    NVML_TOPOLOGY_SYSTEM = 50
};

/* nvmlIntNvLinkDeviceType_t (nvml.h) */
enum { NVML_NVLINK_DEVICE_TYPE_GPU = 0, NVML_NVLINK_DEVICE_TYPE_SWITCH = 2 };
#define MIB 1048576ULL

#define MAX_GPUS 16
#define MAX_MIG 7
#define MAX_PROCS 64
#define MAX_FAILS 32
#define NAME_LEN 96
#define UUID_LEN 96
#define PROC_NAME_LEN 256
#define VERSION_LEN 80
#define FN_LEN 64
#define STATE_MAX (256 * 1024)
#define UNSET (-1LL)

/* Structures as the real nvml.h lays them out (and pynvml mirrors them). */
typedef struct {
    char busIdLegacy[16];
    unsigned int domain;
    unsigned int bus;
    unsigned int device;
    unsigned int pciDeviceId;
    unsigned int pciSubSystemId;
    char busId[32];
} nvmlPciInfo_t;

typedef struct {
    unsigned long long total;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_t;

typedef struct {
    unsigned int version;
    unsigned long long total;
    unsigned long long reserved;
    unsigned long long free;
    unsigned long long used;
} nvmlMemory_v2_t;

typedef struct {
    unsigned int gpu;
    unsigned int memory;
} nvmlUtilization_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
} nvmlProcessInfo_v1_t;

typedef struct {
    unsigned int pid;
    unsigned long long usedGpuMemory;
    unsigned int gpuInstanceId;
    unsigned int computeInstanceId;
} nvmlProcessInfo_t; /* _v2 and _v3 share this layout (24 bytes) */

struct nvmlDevice_st {
    int gpu;
    int mig; /* -1: the GPU itself */
};
typedef struct nvmlDevice_st *nvmlDevice_t;

/* The state, as parsed from the file. */
typedef struct {
    unsigned int pid;
    long long used_mib; /* UNSET: not available */
    char name[PROC_NAME_LEN];
} proc_t;

typedef struct {
    unsigned int gi;
    unsigned int ci;
    long long total_mib;
    long long used_mib;
    char uuid[UUID_LEN];
    char name[NAME_LEN];
} mig_t;

typedef struct {
    unsigned int domain, bus, device, function;
    int links;
    int is_switch;
} nvlink_t;

typedef struct {
    char name[NAME_LEN];
    char uuid[UUID_LEN];
    int has_pci;
    unsigned int domain, bus, device, function;
    unsigned int pci_device_id;
    long long total_mib, reserved_mib, used_mib, registered_mib;
    int cc_major, cc_minor;
    long long power_limit_mw, temperature_c, util_gpu, util_memory;
    int lost, unified, mig_mode;
    mig_t mig[MAX_MIG];
    int mig_count;
    proc_t procs[MAX_PROCS];
    int proc_count;
    long long numa_node, host_bridge, pcie_switch, nvlink_ports;
    nvlink_t nvlink[MAX_NVLINK_PEERS];
    int nvlink_count;
} gpu_t;

typedef struct {
    char function[FN_LEN];
    int gpu; /* -1: every call */
    int code;
} fail_t;

typedef struct {
    char driver_version[VERSION_LEN];
    char nvml_version[VERSION_LEN];
    long long cuda_driver_version;
    double drain_delay;
    char path[PATH_MAX];
    char procs_dir[PATH_MAX];
    gpu_t gpus[MAX_GPUS];
    int gpu_count;
    fail_t fails[MAX_FAILS];
    int fail_count;
} state_t;

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static int init_count;
static state_t st;
static char file_buf[STATE_MAX + 1];
static struct nvmlDevice_st handles[MAX_GPUS][MAX_MIG + 1];

/* ---- small helpers ---------------------------------------------------------------- */

static void complain(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("libnvidia-ml stand-in: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

static double now_epoch(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int parse_ll(const char *text, long long *out)
{
    char *end;
    errno = 0;
    long long value = strtoll(text, &end, 0);
    if (errno || end == text || *end != '\0')
        return -1;
    *out = value;
    return 0;
}

static int parse_double(const char *text, double *out)
{
    char *end;
    errno = 0;
    double value = strtod(text, &end);
    if (errno || end == text || *end != '\0')
        return -1;
    *out = value;
    return 0;
}

static int copy_field(char *dst, size_t size, const char *src)
{
    if (strlen(src) >= size)
        return -1;
    strcpy(dst, src);
    return 0;
}

/* Split "first rest" at the first space run; *rest is "" when there is none. */
static char *split(char *text, char **rest)
{
    char *space = strpbrk(text, " \t");
    if (!space) {
        *rest = text + strlen(text);
        return text;
    }
    *space++ = '\0';
    while (*space == ' ' || *space == '\t')
        space++;
    *rest = space;
    return text;
}

static nvmlReturn_t copy_out(char *buf, unsigned int length, const char *text)
{
    if (!buf)
        return NVML_ERROR_INVALID_ARGUMENT;
    if (!text[0])
        return NVML_ERROR_NOT_SUPPORTED;
    if (strlen(text) + 1 > length)
        return NVML_ERROR_INSUFFICIENT_SIZE;
    strcpy(buf, text);
    return NVML_SUCCESS;
}

static int pid_alive(unsigned int pid)
{
    char path[64], buf[512];
    if (pid == 0 || (kill((pid_t)pid, 0) != 0 && errno != EPERM))
        return 0;
    /* A zombie answers kill(); it holds no GPU memory any more. */
    snprintf(path, sizeof(path), "/proc/%u/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *paren = strrchr(buf, ')');
    return !(paren && paren[1] == ' ' && paren[2] == 'Z');
}

static int read_proc_name(unsigned int pid, char *out, size_t size)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%u/comm", pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    if (!fgets(out, (int)size, f)) {
        fclose(f);
        return -1;
    }
    fclose(f);
    out[strcspn(out, "\n")] = '\0';
    return 0;
}

/* ---- state file ------------------------------------------------------------------- */

static int parse_gpu_line(gpu_t *g, const char *key, char *value, int index)
{
    long long n;
    char *rest;
    if (!strcmp(key, "name"))
        return copy_field(g->name, sizeof(g->name), value);
    if (!strcmp(key, "uuid"))
        return copy_field(g->uuid, sizeof(g->uuid), value);
    if (!strcmp(key, "pci_bus_id")) {
        char tail;
        if (sscanf(value, "%x:%x:%x.%x%c", &g->domain, &g->bus, &g->device, &g->function,
                   &tail) != 4)
            return -1;
        g->has_pci = 1;
        return 0;
    }
    if (!strcmp(key, "compute_capability")) {
        char tail;
        if (sscanf(value, "%d.%d%c", &g->cc_major, &g->cc_minor, &tail) != 2)
            return -1;
        return 0;
    }
    if (!strcmp(key, "mig_device")) {
        if (g->mig_count >= MAX_MIG)
            return -1;
        mig_t *m = &g->mig[g->mig_count];
        long long gi, ci, total, used;
        if (parse_ll(split(value, &rest), &gi) || parse_ll(split(rest, &rest), &ci) ||
            parse_ll(split(rest, &rest), &total) || parse_ll(split(rest, &rest), &used))
            return -1;
        char *uuid = split(rest, &rest);
        if (!uuid[0] || !rest[0] || copy_field(m->uuid, sizeof(m->uuid), uuid) ||
            copy_field(m->name, sizeof(m->name), rest))
            return -1;
        m->gi = (unsigned int)gi;
        m->ci = (unsigned int)ci;
        m->total_mib = total;
        m->used_mib = used;
        g->mig_count++;
        return 0;
    }
    if (!strcmp(key, "process")) {
        if (g->proc_count >= MAX_PROCS)
            return -1;
        proc_t *p = &g->procs[g->proc_count];
        long long pid;
        if (parse_ll(split(value, &rest), &pid) || pid <= 0)
            return -1;
        char *used = split(rest, &rest);
        if (!strcmp(used, "-"))
            p->used_mib = UNSET;
        else if (parse_ll(used, &p->used_mib) || p->used_mib < 0)
            return -1;
        if (copy_field(p->name, sizeof(p->name), rest))
            return -1;
        p->pid = (unsigned int)pid;
        g->proc_count++;
        return 0;
    }
    if (!strcmp(key, "nvlink")) {
        if (g->nvlink_count >= MAX_NVLINK_PEERS)
            return -1;
        nvlink_t *l = &g->nvlink[g->nvlink_count];
        char tail;
        long long links;
        if (sscanf(split(value, &rest), "%x:%x:%x.%x%c", &l->domain, &l->bus, &l->device,
                   &l->function, &tail) != 4 ||
            parse_ll(split(rest, &rest), &links) || links <= 0 || links > NVML_NVLINK_MAX_LINKS)
            return -1;
        l->links = (int)links;
        l->is_switch = !strcmp(rest, "switch");
        if (rest[0] && !l->is_switch)
            return -1;
        g->nvlink_count++;
        return 0;
    }
    if (!strcmp(key, "fail")) {
        if (st.fail_count >= MAX_FAILS)
            return -1;
        fail_t *f = &st.fails[st.fail_count];
        char *function = split(value, &rest);
        if (copy_field(f->function, sizeof(f->function), function) || parse_ll(rest, &n))
            return -1;
        f->code = (int)n;
        f->gpu = index;
        st.fail_count++;
        return 0;
    }
    static const struct {
        const char *key;
        size_t offset;
        int is_int;
    } numbers[] = {
        {"memory_total_mib", offsetof(gpu_t, total_mib), 0},
        {"memory_reserved_mib", offsetof(gpu_t, reserved_mib), 0},
        {"memory_used_mib", offsetof(gpu_t, used_mib), 0},
        {"power_limit_mw", offsetof(gpu_t, power_limit_mw), 0},
        {"temperature_c", offsetof(gpu_t, temperature_c), 0},
        {"utilization_gpu", offsetof(gpu_t, util_gpu), 0},
        {"utilization_memory", offsetof(gpu_t, util_memory), 0},
        {"pci_device_id", offsetof(gpu_t, pci_device_id), 1},
        {"lost", offsetof(gpu_t, lost), 1},
        {"unified", offsetof(gpu_t, unified), 1},
        {"mig_mode", offsetof(gpu_t, mig_mode), 1},
        {"numa_node", offsetof(gpu_t, numa_node), 0},
        {"host_bridge", offsetof(gpu_t, host_bridge), 0},
        {"pcie_switch", offsetof(gpu_t, pcie_switch), 0},
        {"nvlink_ports", offsetof(gpu_t, nvlink_ports), 0},
    };
    for (size_t i = 0; i < sizeof(numbers) / sizeof(numbers[0]); i++) {
        if (strcmp(key, numbers[i].key))
            continue;
        if (parse_ll(value, &n) || n < 0)
            return -1;
        char *field = (char *)g + numbers[i].offset;
        if (numbers[i].is_int)
            *(int *)field = (int)n;
        else
            *(long long *)field = n;
        return 0;
    }
    return -1;
}

static int parse_global_line(const char *key, char *value)
{
    char *rest;
    long long n;
    if (!strcmp(key, "driver_version"))
        return copy_field(st.driver_version, sizeof(st.driver_version), value);
    if (!strcmp(key, "nvml_version"))
        return copy_field(st.nvml_version, sizeof(st.nvml_version), value);
    if (!strcmp(key, "cuda_driver_version"))
        return parse_ll(value, &st.cuda_driver_version);
    if (!strcmp(key, "drain_delay"))
        return parse_double(value, &st.drain_delay) || st.drain_delay < 0 ? -1 : 0;
    if (!strcmp(key, "procs_dir"))
        return copy_field(st.procs_dir, sizeof(st.procs_dir), value);
    if (!strcmp(key, "fail")) {
        if (st.fail_count >= MAX_FAILS)
            return -1;
        fail_t *f = &st.fails[st.fail_count];
        char *function = split(value, &rest);
        if (copy_field(f->function, sizeof(f->function), function) || parse_ll(rest, &n))
            return -1;
        f->code = (int)n;
        f->gpu = -1;
        st.fail_count++;
        return 0;
    }
    return -1;
}

static void new_gpu(gpu_t *g)
{
    memset(g, 0, sizeof(*g));
    g->total_mib = g->reserved_mib = g->used_mib = UNSET;
    g->power_limit_mw = g->temperature_c = g->util_gpu = g->util_memory = UNSET;
    g->cc_major = g->cc_minor = -1;
    g->mig_mode = -1;
    g->host_bridge = g->pcie_switch = g->nvlink_ports = UNSET;
}

/* Parse the whole file into st; 0 when it parsed. */
static int parse_state(const char *path)
{
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    size_t size = fread(file_buf, 1, STATE_MAX + 1, f);
    fclose(f);
    if (size > STATE_MAX) {
        complain("%s: larger than %d bytes", path, STATE_MAX);
        return -2;
    }
    file_buf[size] = '\0';

    memset(&st, 0, sizeof(st));
    copy_field(st.path, sizeof(st.path), path);
    int lineno = 0;
    for (char *line = file_buf, *next; line; line = next) {
        next = strchr(line, '\n');
        if (next)
            *next++ = '\0';
        lineno++;
        while (*line == ' ' || *line == '\t')
            line++;
        size_t len = strlen(line);
        while (len && (line[len - 1] == ' ' || line[len - 1] == '\t' || line[len - 1] == '\r'))
            line[--len] = '\0';
        if (!line[0] || line[0] == '#')
            continue;
        char *value;
        char *key = split(line, &value);
        int bad;
        if (!strcmp(key, "gpu")) {
            bad = st.gpu_count >= MAX_GPUS || value[0];
            if (!bad)
                new_gpu(&st.gpus[st.gpu_count++]);
        } else if (st.gpu_count == 0) {
            bad = parse_global_line(key, value);
        } else {
            bad = parse_gpu_line(&st.gpus[st.gpu_count - 1], key, value, st.gpu_count - 1);
        }
        if (bad) {
            complain("%s: line %d: bad line for key '%s'", path, lineno, key);
            return -2;
        }
    }
    for (int i = 0; i < st.gpu_count; i++) {
        gpu_t *g = &st.gpus[i];
        long long links = 0;
        for (int l = 0; l < g->nvlink_count; l++)
            links += g->nvlink[l].links;
        if (links > NVML_NVLINK_MAX_LINKS ||
            (g->nvlink_ports != UNSET &&
             (links > g->nvlink_ports || g->nvlink_ports > NVML_NVLINK_MAX_LINKS))) {
            complain("%s: GPU %d: %lld NVLinks for nvlink_ports %lld (at most %d)", path, i,
                     links, g->nvlink_ports, NVML_NVLINK_MAX_LINKS);
            return -2;
        }
    }
    if (!st.nvml_version[0] && st.driver_version[0])
        snprintf(st.nvml_version, sizeof(st.nvml_version), "%lld.%s",
                 st.cuda_driver_version / 1000, st.driver_version);
    if (!st.procs_dir[0] && (size_t)snprintf(st.procs_dir, sizeof(st.procs_dir), "%s.d", path) >=
                                sizeof(st.procs_dir))
        return -2;
    return 0;
}

/* Rewrite a registration file with a dead_since line, by temp file and rename; 0 when done. */
static int record_dead_since(const char *dir, const char *name, const char *content, double when)
{
    char tmp[PATH_MAX], final[PATH_MAX];
    if ((size_t)snprintf(tmp, sizeof(tmp), "%s/.%s.%d.tmp", dir, name, (int)getpid()) >=
            sizeof(tmp) ||
        (size_t)snprintf(final, sizeof(final), "%s/%s", dir, name) >= sizeof(final))
        return -1;
    FILE *f = fopen(tmp, "w");
    if (!f)
        return -1;
    size_t len = strlen(content);
    int ok = fputs(content, f) >= 0;
    if (ok && len && content[len - 1] != '\n')
        ok = fputc('\n', f) != EOF;
    ok = fprintf(f, "dead_since %.3f\n", when) > 0 && ok;
    if (fclose(f) != 0 || !ok || rename(tmp, final) != 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

/* Add the registered processes of procs_dir to the GPUs they name. */
static void scan_registered(void)
{
    DIR *dir = opendir(st.procs_dir);
    if (!dir)
        return;
    double now = now_epoch();
    struct dirent *entry;
    while ((entry = readdir(dir)) != NULL) {
        unsigned int index, pid;
        int consumed = 0;
        if (entry->d_name[0] == '.' ||
            sscanf(entry->d_name, "gpu%u-%u%n", &index, &pid, &consumed) != 2 ||
            entry->d_name[consumed] != '\0' || index >= (unsigned int)st.gpu_count)
            continue;
        char path[PATH_MAX], content[1024];
        if ((size_t)snprintf(path, sizeof(path), "%s/%s", st.procs_dir, entry->d_name) >=
            sizeof(path))
            continue;
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        size_t n = fread(content, 1, sizeof(content) - 1, f);
        fclose(f);
        content[n] = '\0';

        char copy[sizeof(content)], name[PROC_NAME_LEN] = "";
        double released = -1, dead = -1;
        long long mib = -1;
        strcpy(copy, content);
        char *save = NULL;
        for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            char *value;
            char *key = split(line, &value);
            if (mib < 0 && parse_ll(key, &mib) == 0)
                continue;
            if (!strcmp(key, "released_at"))
                parse_double(value, &released);
            else if (!strcmp(key, "dead_since"))
                parse_double(value, &dead);
            else if (!strcmp(key, "name"))
                copy_field(name, sizeof(name), value);
        }
        if (mib < 0)
            continue;
        int alive = pid_alive(pid);
        if (!alive && dead < 0 && released < 0) {
            /* Without a record of when it died the drain would never end: count it no more. */
            if (record_dead_since(st.procs_dir, entry->d_name, content, now) != 0) {
                complain("%s/%s: cannot record dead_since; ignoring it", st.procs_dir,
                         entry->d_name);
                continue;
            }
            dead = now;
        }
        double gone = released >= 0 ? released : dead;
        if (gone >= 0 && now >= gone + st.drain_delay)
            continue;
        gpu_t *g = &st.gpus[index];
        g->registered_mib += mib;
        if (!alive || g->proc_count >= MAX_PROCS)
            continue;
        proc_t *p = &g->procs[g->proc_count++];
        p->pid = pid;
        p->used_mib = mib;
        if (name[0])
            strcpy(p->name, name);
        else if (read_proc_name(pid, p->name, sizeof(p->name)) != 0)
            p->name[0] = '\0';
    }
    closedir(dir);
}

/* Read the state again; NVML_SUCCESS or the error every call then returns. */
static nvmlReturn_t load_state(void)
{
    const char *path = getenv("GPUFLEET_NVML_STATE");
    if (!path || !path[0])
        return NVML_ERROR_DRIVER_NOT_LOADED;
    int rc = parse_state(path);
    if (rc == -1)
        return NVML_ERROR_DRIVER_NOT_LOADED;
    if (rc != 0)
        return NVML_ERROR_UNKNOWN;
    scan_registered();
    return NVML_SUCCESS;
}

static nvmlReturn_t injected(const char *function, int gpu)
{
    for (int i = 0; i < st.fail_count; i++)
        if ((st.fails[i].gpu == -1 || st.fails[i].gpu == gpu) &&
            !strcmp(st.fails[i].function, function))
            return st.fails[i].code;
    return NVML_SUCCESS;
}

/* ---- call frame: every export runs between enter() and leave() -------------------- */

static nvmlReturn_t enter(const char *function)
{
    pthread_mutex_lock(&lock);
    if (init_count == 0)
        return NVML_ERROR_UNINITIALIZED;
    nvmlReturn_t rc = load_state();
    return rc != NVML_SUCCESS ? rc : injected(function, -1);
}

static nvmlReturn_t leave(nvmlReturn_t rc)
{
    pthread_mutex_unlock(&lock);
    return rc;
}

static struct nvmlDevice_st *first_handle(void)
{
    return &handles[0][0];
}

static nvmlDevice_t handle_for(int gpu, int mig)
{
    handles[gpu][mig + 1].gpu = gpu;
    handles[gpu][mig + 1].mig = mig;
    return &handles[gpu][mig + 1];
}

static nvmlReturn_t enter_device(const char *function, nvmlDevice_t device, gpu_t **gpu,
                                 mig_t **mig)
{
    nvmlReturn_t rc = enter(function);
    if (rc != NVML_SUCCESS)
        return rc;
    uintptr_t base = (uintptr_t)first_handle(), at = (uintptr_t)device;
    if (at < base || at >= base + sizeof(handles) || (at - base) % sizeof(handles[0][0]))
        return NVML_ERROR_INVALID_ARGUMENT;
    size_t slot = (at - base) / sizeof(handles[0][0]);
    int gi = (int)(slot / (MAX_MIG + 1));
    int mi = (int)(slot % (MAX_MIG + 1)) - 1;
    if (gi >= st.gpu_count)
        return NVML_ERROR_INVALID_ARGUMENT;
    gpu_t *g = &st.gpus[gi];
    if (g->lost)
        return NVML_ERROR_GPU_IS_LOST;
    if (mi >= 0 && (g->mig_mode != 1 || mi >= g->mig_count))
        return NVML_ERROR_INVALID_ARGUMENT;
    *gpu = g;
    *mig = mi >= 0 ? &g->mig[mi] : NULL;
    return injected(function, gi);
}

/* ---- library and system ----------------------------------------------------------- */

static nvmlReturn_t do_init(const char *function)
{
    pthread_mutex_lock(&lock);
    nvmlReturn_t rc = load_state();
    if (rc == NVML_SUCCESS)
        rc = injected(function, -1);
    if (rc == NVML_SUCCESS)
        init_count++;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlInitWithFlags(unsigned int flags)
{
    (void)flags;
    return do_init(__func__);
}

EXPORT nvmlReturn_t nvmlInit_v2(void)
{
    return do_init(__func__);
}

EXPORT nvmlReturn_t nvmlShutdown(void)
{
    pthread_mutex_lock(&lock);
    if (init_count == 0)
        return leave(NVML_ERROR_UNINITIALIZED);
    init_count--;
    return leave(NVML_SUCCESS);
}

EXPORT const char *nvmlErrorString(nvmlReturn_t result)
{
    switch (result) {
    case NVML_SUCCESS: return "Success";
    case NVML_ERROR_UNINITIALIZED: return "Uninitialized";
    case NVML_ERROR_INVALID_ARGUMENT: return "Invalid Argument";
    case NVML_ERROR_NOT_SUPPORTED: return "Not Supported";
    case NVML_ERROR_NO_PERMISSION: return "Insufficient Permissions";
    case NVML_ERROR_ALREADY_INITIALIZED: return "Already Initialized";
    case NVML_ERROR_NOT_FOUND: return "Not Found";
    case NVML_ERROR_INSUFFICIENT_SIZE: return "Insufficient Size";
    case NVML_ERROR_DRIVER_NOT_LOADED: return "Driver Not Loaded";
    case NVML_ERROR_TIMEOUT: return "Timeout";
    case NVML_ERROR_LIBRARY_NOT_FOUND: return "NVML Shared Library Not Found";
    case NVML_ERROR_FUNCTION_NOT_FOUND: return "Function Not Found";
    case NVML_ERROR_GPU_IS_LOST: return "GPU is lost";
    case NVML_ERROR_RESET_REQUIRED: return "GPU requires restart";
    case NVML_ERROR_LIB_RM_VERSION_MISMATCH: return "RM has detected an NVML/RM version mismatch.";
    case NVML_ERROR_MEMORY: return "Insufficient Memory";
    case NVML_ERROR_ARGUMENT_VERSION_MISMATCH: return "Argument version mismatch";
    default: return "Unknown Error";
    }
}

EXPORT nvmlReturn_t nvmlSystemGetDriverVersion(char *version, unsigned int length)
{
    nvmlReturn_t rc = enter(__func__);
    return leave(rc ? rc : copy_out(version, length, st.driver_version));
}

EXPORT nvmlReturn_t nvmlSystemGetNVMLVersion(char *version, unsigned int length)
{
    nvmlReturn_t rc = enter(__func__);
    return leave(rc ? rc : copy_out(version, length, st.nvml_version));
}

static nvmlReturn_t cuda_version(const char *function, int *version)
{
    nvmlReturn_t rc = enter(function);
    if (rc == NVML_SUCCESS && !version)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS && st.cuda_driver_version <= 0)
        rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc == NVML_SUCCESS)
        *version = (int)st.cuda_driver_version;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion(int *version)
{
    return cuda_version(__func__, version);
}

EXPORT nvmlReturn_t nvmlSystemGetCudaDriverVersion_v2(int *version)
{
    return cuda_version(__func__, version);
}

EXPORT nvmlReturn_t nvmlSystemGetProcessName(unsigned int pid, char *name, unsigned int length)
{
    nvmlReturn_t rc = enter(__func__);
    if (rc != NVML_SUCCESS)
        return leave(rc);
    for (int g = 0; g < st.gpu_count; g++)
        for (int p = 0; p < st.gpus[g].proc_count; p++)
            if (st.gpus[g].procs[p].pid == pid && st.gpus[g].procs[p].name[0])
                return leave(copy_out(name, length, st.gpus[g].procs[p].name));
    char found[PROC_NAME_LEN];
    if (read_proc_name(pid, found, sizeof(found)) != 0)
        return leave(NVML_ERROR_NOT_FOUND);
    return leave(copy_out(name, length, found));
}

/* ---- devices ---------------------------------------------------------------------- */

#ifndef OMIT_nvmlDeviceGetCount_v2
EXPORT nvmlReturn_t nvmlDeviceGetCount_v2(unsigned int *count)
{
    nvmlReturn_t rc = enter(__func__);
    if (rc == NVML_SUCCESS && !count)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *count = (unsigned int)st.gpu_count;
    return leave(rc);
}
#endif

EXPORT nvmlReturn_t nvmlDeviceGetHandleByIndex_v2(unsigned int index, nvmlDevice_t *device)
{
    nvmlReturn_t rc = enter(__func__);
    if (rc == NVML_SUCCESS && (!device || index >= (unsigned int)st.gpu_count))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS && st.gpus[index].lost)
        rc = NVML_ERROR_GPU_IS_LOST;
    if (rc == NVML_SUCCESS)
        rc = injected(__func__, (int)index);
    if (rc == NVML_SUCCESS)
        *device = handle_for((int)index, -1);
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetHandleByUUID(const char *uuid, nvmlDevice_t *device)
{
    nvmlReturn_t rc = enter(__func__);
    if (rc == NVML_SUCCESS && (!uuid || !device))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc != NVML_SUCCESS)
        return leave(rc);
    for (int g = 0; g < st.gpu_count; g++) {
        gpu_t *gpu = &st.gpus[g];
        int mig = -2;
        if (!strcmp(gpu->uuid, uuid))
            mig = -1;
        for (int m = 0; gpu->mig_mode == 1 && m < gpu->mig_count && mig == -2; m++)
            if (!strcmp(gpu->mig[m].uuid, uuid))
                mig = m;
        if (mig == -2)
            continue;
        if (gpu->lost)
            return leave(NVML_ERROR_GPU_IS_LOST);
        *device = handle_for(g, mig);
        return leave(NVML_SUCCESS);
    }
    return leave(NVML_ERROR_NOT_FOUND);
}

EXPORT nvmlReturn_t nvmlDeviceGetName(nvmlDevice_t device, char *name, unsigned int length)
{
    gpu_t *g;
    mig_t *m;
    nvmlReturn_t rc = enter_device(__func__, device, &g, &m);
    return leave(rc ? rc : copy_out(name, length, m ? m->name : g->name));
}

EXPORT nvmlReturn_t nvmlDeviceGetUUID(nvmlDevice_t device, char *uuid, unsigned int length)
{
    gpu_t *g;
    mig_t *m;
    nvmlReturn_t rc = enter_device(__func__, device, &g, &m);
    return leave(rc ? rc : copy_out(uuid, length, m ? m->uuid : g->uuid));
}

EXPORT nvmlReturn_t nvmlDeviceGetIndex(nvmlDevice_t device, unsigned int *index)
{
    gpu_t *g;
    mig_t *m;
    nvmlReturn_t rc = enter_device(__func__, device, &g, &m);
    if (rc == NVML_SUCCESS && !index)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *index = (unsigned int)(g - st.gpus);
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetPciInfo_v3(nvmlDevice_t device, nvmlPciInfo_t *pci)
{
    gpu_t *g;
    mig_t *m;
    nvmlReturn_t rc = enter_device(__func__, device, &g, &m);
    if (rc == NVML_SUCCESS && !pci)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS && !g->has_pci)
        rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc != NVML_SUCCESS)
        return leave(rc);
    memset(pci, 0, sizeof(*pci));
    pci->domain = g->domain;
    pci->bus = g->bus;
    pci->device = g->device;
    pci->pciDeviceId = g->pci_device_id;
    snprintf(pci->busIdLegacy, sizeof(pci->busIdLegacy), "%04X:%02X:%02X.%X", g->domain & 0xffff,
             g->bus & 0xff, g->device & 0xff, g->function & 0xf);
    snprintf(pci->busId, sizeof(pci->busId), "%08X:%02X:%02X.%X", g->domain, g->bus & 0xff,
             g->device & 0xff, g->function & 0xf);
    return leave(NVML_SUCCESS);
}

/* Memory in bytes: total, reserved, used (static + registered). */
static nvmlReturn_t memory_of(gpu_t *g, mig_t *m, unsigned long long *total,
                              unsigned long long *reserved, unsigned long long *used)
{
    if (m) {
        *total = (unsigned long long)m->total_mib * MIB;
        *reserved = 0;
        *used = (unsigned long long)m->used_mib * MIB;
        return NVML_SUCCESS;
    }
    if (g->unified || g->total_mib == UNSET)
        return NVML_ERROR_NOT_SUPPORTED;
    *total = (unsigned long long)g->total_mib * MIB;
    *reserved = g->reserved_mib == UNSET ? 0 : (unsigned long long)g->reserved_mib * MIB;
    *used = (unsigned long long)((g->used_mib == UNSET ? 0 : g->used_mib) + g->registered_mib) *
            MIB;
    return NVML_SUCCESS;
}

static unsigned long long left_over(unsigned long long total, unsigned long long taken)
{
    return taken >= total ? 0 : total - taken;
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo(nvmlDevice_t device, nvmlMemory_t *memory)
{
    gpu_t *g;
    mig_t *m;
    unsigned long long total, reserved, used;
    nvmlReturn_t rc = enter_device(__func__, device, &g, &m);
    if (rc == NVML_SUCCESS && !memory)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        rc = memory_of(g, m, &total, &reserved, &used);
    if (rc == NVML_SUCCESS) {
        /* The v1 struct has no reserved field: reserved memory counts as used. */
        memory->total = total;
        memory->used = used + reserved;
        memory->free = left_over(total, used + reserved);
    }
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetMemoryInfo_v2(nvmlDevice_t device, nvmlMemory_v2_t *memory)
{
    gpu_t *g;
    mig_t *m;
    unsigned long long total, reserved, used;
    nvmlReturn_t rc = enter_device(__func__, device, &g, &m);
    if (rc == NVML_SUCCESS && !memory)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS && memory->version != NVML_MEMORY_V2_VERSION)
        rc = NVML_ERROR_ARGUMENT_VERSION_MISMATCH;
    if (rc == NVML_SUCCESS)
        rc = memory_of(g, m, &total, &reserved, &used);
    if (rc == NVML_SUCCESS) {
        memory->total = total;
        memory->reserved = reserved;
        memory->used = used;
        memory->free = left_over(total, used + reserved);
    }
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetCudaComputeCapability(nvmlDevice_t device, int *major,
                                                       int *minor)
{
    gpu_t *g;
    mig_t *m;
    nvmlReturn_t rc = enter_device(__func__, device, &g, &m);
    if (rc == NVML_SUCCESS && (!major || !minor))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS && g->cc_major < 0)
        rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc == NVML_SUCCESS) {
        *major = g->cc_major;
        *minor = g->cc_minor;
    }
    return leave(rc);
}

/* A getter of one unsigned number of the parent GPU; NOT_SUPPORTED when unset. */
static nvmlReturn_t get_number(const char *function, nvmlDevice_t device, size_t offset,
                               unsigned int *out)
{
    gpu_t *g;
    mig_t *m;
    nvmlReturn_t rc = enter_device(function, device, &g, &m);
    if (rc != NVML_SUCCESS)
        return leave(rc);
    long long value = *(long long *)((char *)g + offset);
    if (!out)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (m || value == UNSET)
        return leave(NVML_ERROR_NOT_SUPPORTED);
    *out = (unsigned int)value;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetPowerManagementLimit(nvmlDevice_t device, unsigned int *limit)
{
    return get_number(__func__, device, offsetof(gpu_t, power_limit_mw), limit);
}

EXPORT nvmlReturn_t nvmlDeviceGetEnforcedPowerLimit(nvmlDevice_t device, unsigned int *limit)
{
    return get_number(__func__, device, offsetof(gpu_t, power_limit_mw), limit);
}

EXPORT nvmlReturn_t nvmlDeviceGetTemperature(nvmlDevice_t device, int sensor, unsigned int *temp)
{
    if (sensor != 0) { /* NVML_TEMPERATURE_GPU is the only sensor */
        gpu_t *g;
        mig_t *m;
        nvmlReturn_t rc = enter_device(__func__, device, &g, &m);
        return leave(rc ? rc : NVML_ERROR_INVALID_ARGUMENT);
    }
    return get_number(__func__, device, offsetof(gpu_t, temperature_c), temp);
}

EXPORT nvmlReturn_t nvmlDeviceGetUtilizationRates(nvmlDevice_t device, nvmlUtilization_t *rates)
{
    gpu_t *g;
    mig_t *m;
    nvmlReturn_t rc = enter_device(__func__, device, &g, &m);
    if (rc == NVML_SUCCESS && !rates)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS && (m || g->util_gpu == UNSET))
        rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc == NVML_SUCCESS) {
        rates->gpu = (unsigned int)g->util_gpu;
        rates->memory = g->util_memory == UNSET ? 0 : (unsigned int)g->util_memory;
    }
    return leave(rc);
}

/* The size-query protocol of nvmlDeviceGetComputeRunningProcesses*. */
static nvmlReturn_t list_processes(const char *function, nvmlDevice_t device,
                                   unsigned int *count, void *infos, int legacy)
{
    gpu_t *g;
    mig_t *m;
    nvmlReturn_t rc = enter_device(function, device, &g, &m);
    if (rc == NVML_SUCCESS && !count)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc != NVML_SUCCESS)
        return leave(rc);
    unsigned int n = m ? 0 : (unsigned int)g->proc_count;
    if (n > *count || (n && !infos)) {
        *count = n;
        return leave(NVML_ERROR_INSUFFICIENT_SIZE);
    }
    for (unsigned int i = 0; i < n; i++) {
        const proc_t *p = &g->procs[i];
        unsigned long long used = p->used_mib == UNSET ? NVML_VALUE_NOT_AVAILABLE_ULL
                                                       : (unsigned long long)p->used_mib * MIB;
        if (legacy) {
            nvmlProcessInfo_v1_t *out = (nvmlProcessInfo_v1_t *)infos + i;
            out->pid = p->pid;
            out->usedGpuMemory = used;
        } else {
            nvmlProcessInfo_t *out = (nvmlProcessInfo_t *)infos + i;
            out->pid = p->pid;
            out->usedGpuMemory = used;
            out->gpuInstanceId = NVML_INSTANCE_NONE;
            out->computeInstanceId = NVML_INSTANCE_NONE;
        }
    }
    *count = n;
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses(nvmlDevice_t device,
                                                         unsigned int *count,
                                                         nvmlProcessInfo_v1_t *infos)
{
    return list_processes(__func__, device, count, infos, 1);
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v2(nvmlDevice_t device,
                                                            unsigned int *count,
                                                            nvmlProcessInfo_t *infos)
{
    return list_processes(__func__, device, count, infos, 0);
}

#ifndef OMIT_nvmlDeviceGetComputeRunningProcesses_v3
EXPORT nvmlReturn_t nvmlDeviceGetComputeRunningProcesses_v3(nvmlDevice_t device,
                                                            unsigned int *count,
                                                            nvmlProcessInfo_t *infos)
{
    return list_processes(__func__, device, count, infos, 0);
}
#endif

/* ---- MIG ------------------------------------------------------------------------- */

EXPORT nvmlReturn_t nvmlDeviceGetMigMode(nvmlDevice_t device, unsigned int *current,
                                         unsigned int *pending)
{
    gpu_t *g;
    mig_t *m;
    nvmlReturn_t rc = enter_device(__func__, device, &g, &m);
    if (rc == NVML_SUCCESS && (!current || !pending))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS && (m || g->mig_mode < 0))
        rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc == NVML_SUCCESS)
        *current = *pending = (unsigned int)g->mig_mode;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetMaxMigDeviceCount(nvmlDevice_t device, unsigned int *count)
{
    gpu_t *g;
    mig_t *m;
    nvmlReturn_t rc = enter_device(__func__, device, &g, &m);
    if (rc == NVML_SUCCESS && !count)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS && (m || g->mig_mode < 0))
        rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc == NVML_SUCCESS)
        *count = MAX_MIG;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetMigDeviceHandleByIndex(nvmlDevice_t device, unsigned int index,
                                                        nvmlDevice_t *mig_device)
{
    gpu_t *g;
    mig_t *m;
    nvmlReturn_t rc = enter_device(__func__, device, &g, &m);
    if (rc == NVML_SUCCESS && (!mig_device || m || index >= MAX_MIG))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS && g->mig_mode < 0)
        rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc == NVML_SUCCESS && (g->mig_mode != 1 || index >= (unsigned int)g->mig_count))
        rc = NVML_ERROR_NOT_FOUND;
    if (rc == NVML_SUCCESS)
        *mig_device = handle_for((int)(g - st.gpus), (int)index);
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceIsMigDeviceHandle(nvmlDevice_t device, unsigned int *is_mig)
{
    gpu_t *g;
    mig_t *m;
    nvmlReturn_t rc = enter_device(__func__, device, &g, &m);
    if (rc == NVML_SUCCESS && !is_mig)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *is_mig = m != NULL;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetDeviceHandleFromMigDeviceHandle(nvmlDevice_t mig_device,
                                                                 nvmlDevice_t *device)
{
    gpu_t *g;
    mig_t *m;
    nvmlReturn_t rc = enter_device(__func__, mig_device, &g, &m);
    if (rc == NVML_SUCCESS && (!device || !m))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *device = handle_for((int)(g - st.gpus), -1);
    return leave(rc);
}

static nvmlReturn_t instance_id(const char *function, nvmlDevice_t device, int compute,
                                unsigned int *id)
{
    gpu_t *g;
    mig_t *m;
    nvmlReturn_t rc = enter_device(function, device, &g, &m);
    if (rc == NVML_SUCCESS && (!id || !m))
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        *id = compute ? m->ci : m->gi;
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetGpuInstanceId(nvmlDevice_t device, unsigned int *id)
{
    return instance_id(__func__, device, 0, id);
}

EXPORT nvmlReturn_t nvmlDeviceGetComputeInstanceId(nvmlDevice_t device, unsigned int *id)
{
    return instance_id(__func__, device, 1, id);
}

/* ---- topology and NVLink ----------------------------------------------------------- */

/* Which GPU a handle is, without taking the lock (the caller holds it); NULL if none. */
static gpu_t *gpu_of(nvmlDevice_t device, int *is_mig)
{
    uintptr_t base = (uintptr_t)first_handle(), at = (uintptr_t)device;
    if (at < base || at >= base + sizeof(handles) || (at - base) % sizeof(handles[0][0]))
        return NULL;
    size_t slot = (at - base) / sizeof(handles[0][0]);
    int gi = (int)(slot / (MAX_MIG + 1));
    if (gi >= st.gpu_count)
        return NULL;
    *is_mig = (int)(slot % (MAX_MIG + 1)) > 0;
    return &st.gpus[gi];
}

EXPORT nvmlReturn_t nvmlDeviceGetTopologyCommonAncestor(nvmlDevice_t device1,
                                                       nvmlDevice_t device2,
                                                       unsigned int *path_info)
{
    gpu_t *a, *b;
    mig_t *m;
    int b_mig = 0;
    nvmlReturn_t rc = enter_device(__func__, device1, &a, &m);
    if (rc != NVML_SUCCESS)
        return leave(rc);
    b = gpu_of(device2, &b_mig);
    if (!path_info || m || !b || b_mig || a == b)
        return leave(NVML_ERROR_INVALID_ARGUMENT);
    if (b->lost)
        return leave(NVML_ERROR_GPU_IS_LOST);
    rc = injected(__func__, (int)(b - st.gpus));
    if (rc != NVML_SUCCESS)
        return leave(rc);
    if (a->pcie_switch != UNSET && a->pcie_switch == b->pcie_switch)
        *path_info = NVML_TOPOLOGY_SINGLE;
    else if (a->host_bridge != UNSET && a->host_bridge == b->host_bridge)
        *path_info = NVML_TOPOLOGY_HOSTBRIDGE;
    else if (a->numa_node == b->numa_node)
        *path_info = NVML_TOPOLOGY_NODE;
    else
        *path_info = NVML_TOPOLOGY_SYSTEM;
    return leave(NVML_SUCCESS);
}

/* The nvlink line that link number `link` of the GPU belongs to: links are numbered in the
 * order of the nvlink lines. NVML_SUCCESS with *line NULL for an inactive link. */
static nvmlReturn_t nvlink_of(gpu_t *g, mig_t *m, unsigned int link, nvlink_t **line)
{
    long long total = 0;
    for (int l = 0; l < g->nvlink_count; l++)
        total += g->nvlink[l].links;
    long long ports = g->nvlink_ports != UNSET ? g->nvlink_ports : total;
    if (m || ports == 0)
        return NVML_ERROR_NOT_SUPPORTED;
    if (link >= (unsigned int)ports)
        return NVML_ERROR_INVALID_ARGUMENT;
    *line = NULL;
    long long first = 0;
    for (int l = 0; l < g->nvlink_count; l++) {
        if (link < first + g->nvlink[l].links) {
            *line = &g->nvlink[l];
            break;
        }
        first += g->nvlink[l].links;
    }
    return NVML_SUCCESS;
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkState(nvmlDevice_t device, unsigned int link,
                                             unsigned int *is_active)
{
    gpu_t *g;
    mig_t *m;
    nvlink_t *line;
    nvmlReturn_t rc = enter_device(__func__, device, &g, &m);
    if (rc == NVML_SUCCESS && !is_active)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        rc = nvlink_of(g, m, link, &line);
    if (rc == NVML_SUCCESS)
        *is_active = line != NULL; /* NVML_FEATURE_ENABLED / _DISABLED */
    return leave(rc);
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemotePciInfo_v2(nvmlDevice_t device, unsigned int link,
                                                        nvmlPciInfo_t *pci)
{
    gpu_t *g;
    mig_t *m;
    nvlink_t *line;
    nvmlReturn_t rc = enter_device(__func__, device, &g, &m);
    if (rc == NVML_SUCCESS && !pci)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        rc = nvlink_of(g, m, link, &line);
    if (rc == NVML_SUCCESS && !line)
        rc = NVML_ERROR_NOT_SUPPORTED; /* an inactive link has no remote end to tell */
    if (rc != NVML_SUCCESS)
        return leave(rc);
    memset(pci, 0, sizeof(*pci));
    pci->domain = line->domain;
    pci->bus = line->bus;
    pci->device = line->device;
    snprintf(pci->busIdLegacy, sizeof(pci->busIdLegacy), "%04X:%02X:%02X.%X",
             line->domain & 0xffff, line->bus & 0xff, line->device & 0xff, line->function & 0xf);
    snprintf(pci->busId, sizeof(pci->busId), "%08X:%02X:%02X.%X", line->domain,
             line->bus & 0xff, line->device & 0xff, line->function & 0xf);
    return leave(NVML_SUCCESS);
}

EXPORT nvmlReturn_t nvmlDeviceGetNvLinkRemoteDeviceType(nvmlDevice_t device, unsigned int link,
                                                        unsigned int *kind)
{
    gpu_t *g;
    mig_t *m;
    nvlink_t *line;
    nvmlReturn_t rc = enter_device(__func__, device, &g, &m);
    if (rc == NVML_SUCCESS && !kind)
        rc = NVML_ERROR_INVALID_ARGUMENT;
    if (rc == NVML_SUCCESS)
        rc = nvlink_of(g, m, link, &line);
    if (rc == NVML_SUCCESS && !line)
        rc = NVML_ERROR_NOT_SUPPORTED;
    if (rc == NVML_SUCCESS)
        *kind = line->is_switch ? NVML_NVLINK_DEVICE_TYPE_SWITCH : NVML_NVLINK_DEVICE_TYPE_GPU;
    return leave(rc);
}
