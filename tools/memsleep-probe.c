/*
 * memsleep-probe.c - resident GPU and host memory of a process tree, and a gate on it.
 *
 * An RL driver releases an inference engine's memory and must know the GPU
 * is really free before training starts. This tool asks the driver (NVML)
 * what the engine's processes hold, per GPU, and /proc what they hold on
 * the host; prints a table or JSON; and, as a gate, exits 0 when the figure
 * is at or under a threshold and 1 above it, or waits for it to get there.
 * The figure gated is the largest per-GPU figure (a tensor-parallel engine
 * holds a share on each GPU; the fullest GPU is the one training would run
 * out on), or with --host alone the host RSS of the tree. When the figure
 * cannot be had, the gate passes with a warning (fail-open) unless
 * --fail-closed is given. docs/probe.md has the whole story.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "memsleep/probe.h"

#define PROG "memsleep-probe"

enum { EXIT_PASS = 0, EXIT_ABOVE = 1, EXIT_ERROR = 2 };

#define GIB_BYTES 1073741824.0
#define MIB_BYTES 1048576.0

/* What the command line asked for. */
typedef struct options_t {
  pid_t pid;          /* root of the tree */
  unsigned flags;     /* MEMSLEEP_PROBE_NO_CHILDREN or 0 */
  int gpu;            /* measure GPU memory */
  int host;           /* measure host memory */
  int json;           /* JSON instead of the table */
  int gate;           /* GATE_NONE, GATE_ONCE or GATE_WAIT */
  double limit_bytes; /* the threshold, in bytes */
  double limit_gib;   /* the same, as given */
  double timeout_s;   /* --wait-below: how long to wait */
  double interval_s;  /* --wait-below: time between polls */
  int fail_closed;    /* unknown fails instead of passing */
} options_t;

enum { GATE_NONE, GATE_ONCE, GATE_WAIT };

/* One measurement of the tree. */
typedef struct measurement_t {
  memsleep_probe_gpu_result_t gpu;
  memsleep_probe_host_result_t host;
  int exited; /* the root exited during --wait-below: nothing else holds */
} measurement_t;

/* The figure the gate compares. */
typedef struct figure_t {
  const char *name;   /* "GPU max" or "host RSS" */
  int known;          /* 1: bytes holds */
  size_t bytes;       /* the figure */
  int gpu;            /* for "GPU max": the GPU holding it */
  const char *reason; /* when unknown: short reason */
  const char *detail; /* when unknown: the sentence */
} figure_t;

static void usage(FILE *to) {
  fprintf(to,
          "usage: " PROG " --pid PID [--no-children] [--gpu] [--host] [--json]\n"
          "       [--max-residual-gib X | --wait-below X [--timeout S] [--interval S]]\n"
          "       [--fail-closed]\n"
          "\n"
          "Resident memory of a process and all its descendants: per GPU (what NVML\n"
          "reports for each process) and on the host (Rss from /proc).\n"
          "\n"
          "  --pid PID             the process whose tree is measured (required)\n"
          "  --no-children         the process alone, not its descendants\n"
          "  --gpu                 GPU memory only\n"
          "  --host                host memory only (default: both; the gate then uses GPU)\n"
          "  --json                one JSON object on stdout instead of the table\n"
          "  --max-residual-gib X  gate: exit 0 if the figure is at or under X GiB, 1 above\n"
          "  --wait-below X        poll until the figure is at or under X GiB: exit 0,\n"
          "                        or 1 when --timeout passes first (a progress line a poll)\n"
          "  --timeout S           seconds --wait-below waits (default 60)\n"
          "  --interval S          seconds between polls (default 1)\n"
          "  --fail-closed         an unknown figure exits 2 instead of passing with a warning\n"
          "  --help                this text\n"
          "\n"
          "The gated figure is the largest per-GPU figure (max over GPUs); with --host\n"
          "alone, the host RSS of the tree.\n"
          "\n"
          "Exit status: 0 at or under the threshold (or measured, without a gate, or\n"
          "unknown and fail-open); 1 above it, or --wait-below timed out; 2 bad usage,\n"
          "bad PID, or unknown figure with --fail-closed.\n"
          "\n"
          "Environment: MEMSLEEP_NVML_LIBRARY=FILE loads FILE instead of libnvidia-ml.so.1.\n");
}

/* Parses a PID: a positive decimal number naming an existing process. */
static int parse_pid(const char *text, pid_t *pid) {
  const char *p = text;
  if (*p == '\0') {
    fprintf(stderr, PROG ": --pid '': empty; a process id is a positive number\n");
    return -1;
  }
  if (*p == '-' || *p == '+')
    p++;
  int digits = *p != '\0';
  for (const char *q = p; *q != '\0'; q++)
    if (*q < '0' || *q > '9')
      digits = 0;
  if (!digits) {
    fprintf(stderr, PROG ": --pid '%s': not a number; a process id is a positive number\n", text);
    return -1;
  }
  if (text[0] == '-') {
    fprintf(stderr, PROG ": --pid '%s': negative; a process id is a positive number\n", text);
    return -1;
  }
  errno = 0;
  long long v = strtoll(text, NULL, 10);
  if (errno == ERANGE || v > INT_MAX) {
    fprintf(stderr, PROG ": --pid '%s': out of range for a process id\n", text);
    return -1;
  }
  if (v == 0) {
    fprintf(stderr, PROG ": --pid '%s': 0 is not a process id; it must be > 0\n", text);
    return -1;
  }
  *pid = (pid_t)v;
  return 0;
}

/* Parses a non-negative finite number for option name. */
static int parse_number(const char *name, const char *text, double *out) {
  char *end = NULL;
  errno = 0;
  double v = strtod(text, &end);
  if (end == text || *end != '\0' || errno == ERANGE || !isfinite(v) || v < 0) {
    fprintf(stderr, PROG ": %s '%s': expected a number >= 0\n", name, text);
    return -1;
  }
  *out = v;
  return 0;
}

/* Fills *o from argv. 0, EXIT_ERROR on a usage error, or -1 after --help. */
static int parse_options(int argc, char **argv, options_t *o) {
  enum {
    O_PID = 256,
    O_NO_CHILDREN,
    O_GPU,
    O_HOST,
    O_JSON,
    O_MAX,
    O_WAIT,
    O_TIMEOUT,
    O_INTERVAL,
    O_FAIL_CLOSED,
    O_HELP
  };
  static const struct option longopts[] = {
      {"pid", required_argument, NULL, O_PID},
      {"no-children", no_argument, NULL, O_NO_CHILDREN},
      {"gpu", no_argument, NULL, O_GPU},
      {"host", no_argument, NULL, O_HOST},
      {"json", no_argument, NULL, O_JSON},
      {"max-residual-gib", required_argument, NULL, O_MAX},
      {"wait-below", required_argument, NULL, O_WAIT},
      {"timeout", required_argument, NULL, O_TIMEOUT},
      {"interval", required_argument, NULL, O_INTERVAL},
      {"fail-closed", no_argument, NULL, O_FAIL_CLOSED},
      {"help", no_argument, NULL, O_HELP},
      {NULL, 0, NULL, 0},
  };
  memset(o, 0, sizeof *o);
  o->timeout_s = 60;
  o->interval_s = 1;
  int have_pid = 0, have_timeout = 0, have_interval = 0;
  const char *pid_text = NULL;
  opterr = 0;
  int c;
  while ((c = getopt_long(argc, argv, ":", longopts, NULL)) != -1) {
    switch (c) {
    case O_PID:
      have_pid = 1;
      pid_text = optarg;
      break;
    case O_NO_CHILDREN:
      o->flags |= MEMSLEEP_PROBE_NO_CHILDREN;
      break;
    case O_GPU:
      o->gpu = 1;
      break;
    case O_HOST:
      o->host = 1;
      break;
    case O_JSON:
      o->json = 1;
      break;
    case O_MAX:
    case O_WAIT:
      if (o->gate != GATE_NONE) {
        fprintf(stderr, PROG ": give one of --max-residual-gib and --wait-below, once\n");
        return EXIT_ERROR;
      }
      o->gate = c == O_MAX ? GATE_ONCE : GATE_WAIT;
      if (parse_number(c == O_MAX ? "--max-residual-gib" : "--wait-below", optarg, &o->limit_gib) !=
          0)
        return EXIT_ERROR;
      break;
    case O_TIMEOUT:
      have_timeout = 1;
      if (parse_number("--timeout", optarg, &o->timeout_s) != 0)
        return EXIT_ERROR;
      break;
    case O_INTERVAL:
      have_interval = 1;
      if (parse_number("--interval", optarg, &o->interval_s) != 0)
        return EXIT_ERROR;
      if (o->interval_s < 0.01)
        o->interval_s = 0.01;
      break;
    case O_FAIL_CLOSED:
      o->fail_closed = 1;
      break;
    case O_HELP:
      usage(stdout);
      return -1;
    case ':':
      fprintf(stderr, PROG ": %s needs a value (try --help)\n", argv[optind - 1]);
      return EXIT_ERROR;
    default:
      fprintf(stderr, PROG ": unknown option '%s' (try --help)\n", argv[optind - 1]);
      return EXIT_ERROR;
    }
  }
  if (optind < argc) {
    fprintf(stderr, PROG ": unexpected argument '%s' (try --help)\n", argv[optind]);
    return EXIT_ERROR;
  }
  if (!have_pid) {
    fprintf(stderr, PROG ": --pid PID is required (try --help)\n");
    return EXIT_ERROR;
  }
  if ((have_timeout || have_interval) && o->gate != GATE_WAIT) {
    fprintf(stderr, PROG ": --timeout and --interval go with --wait-below\n");
    return EXIT_ERROR;
  }
  if (parse_pid(pid_text, &o->pid) != 0)
    return EXIT_ERROR;
  if (!o->gpu && !o->host)
    o->gpu = o->host = 1;
  o->limit_bytes = o->limit_gib * GIB_BYTES;
  return 0;
}

/* Measures what the options ask for. 0 or a MEMSLEEP_E* code (message set). */
static int measure(const options_t *o, measurement_t *m) {
  m->exited = 0;
  if (o->gpu) {
    int rc = memsleep_probe_gpu(o->pid, o->flags, &m->gpu);
    if (rc != 0)
      return rc;
  }
  if (o->host) {
    int rc = memsleep_probe_host(o->pid, o->flags, &m->host);
    if (rc != 0)
      return rc;
  }
  return 0;
}

/* The figure the gate compares: GPU max when GPU was measured, else host RSS. */
static figure_t gated_figure(const options_t *o, const measurement_t *m) {
  figure_t f;
  memset(&f, 0, sizeof f);
  f.gpu = -1;
  if (o->gpu) {
    f.name = "GPU max";
    f.known = m->gpu.known;
    f.bytes = m->gpu.max_bytes;
    f.gpu = m->gpu.max_gpu;
    f.reason = memsleep_probe_reason_name(m->gpu.reason);
    f.detail = m->gpu.detail;
  } else {
    f.name = "host RSS";
    f.known = m->host.known;
    f.bytes = m->host.resident_bytes;
    f.reason = memsleep_probe_reason_name(m->host.reason);
    f.detail = m->host.detail;
  }
  if (m->exited) {
    f.known = 0;
    f.reason = "process exited";
    f.detail = "the process exited while waiting";
  }
  return f;
}

static double mib(size_t bytes) {
  return (double)bytes / MIB_BYTES;
}
static double gib(size_t bytes) {
  return (double)bytes / GIB_BYTES;
}

/* The human-readable report: one row per GPU, max, total, host. */
static void print_table(const options_t *o, const measurement_t *m) {
  size_t procs = o->gpu ? m->gpu.tree_processes : m->host.tree_processes;
  if (o->flags & MEMSLEEP_PROBE_NO_CHILDREN)
    printf("process %d (descendants not counted)\n", (int)o->pid);
  else
    printf("process tree of %d: %zu process%s\n", (int)o->pid, procs, procs == 1 ? "" : "es");
  if (o->gpu) {
    const memsleep_probe_gpu_result_t *g = &m->gpu;
    if (!g->known) {
      printf("GPU    unknown (%s): %s\n", memsleep_probe_reason_name(g->reason), g->detail);
    } else {
      printf("GPU    %12s  %9s  %s\n", "resident", "processes", "uuid");
      for (size_t i = 0; i < g->gpu_count; i++)
        printf("%-5u  %8.1f MiB  %9zu  %s\n", g->gpus[i].index, mib(g->gpus[i].resident_bytes),
               g->gpus[i].processes, g->gpus[i].uuid);
      printf("max    %8.1f MiB  (GPU %d)\n", mib(g->max_bytes), g->max_gpu);
      printf("total  %8.1f MiB\n", mib(g->total_bytes));
    }
  }
  if (o->host) {
    const memsleep_probe_host_result_t *h = &m->host;
    if (!h->known)
      printf("host   unknown (%s): %s\n", memsleep_probe_reason_name(h->reason), h->detail);
    else
      printf("host   %8.1f MiB  (RSS of %zu process%s)\n", mib(h->resident_bytes), h->proc_count,
             h->proc_count == 1 ? "" : "es");
  }
}

/* Writes s as a JSON string. */
static void json_string(const char *s) {
  putchar('"');
  for (const unsigned char *p = (const unsigned char *)s; *p != '\0'; p++) {
    if (*p == '"' || *p == '\\')
      printf("\\%c", *p);
    else if (*p < 0x20)
      printf("\\u%04x", *p);
    else
      putchar(*p);
  }
  putchar('"');
}

/* Per-process rows as a JSON array (with the GPU index for GPU rows). */
static void json_procs(const memsleep_probe_proc_t *rows, size_t n, int with_gpu) {
  printf("[");
  for (size_t i = 0; i < n; i++) {
    printf("%s{\"pid\":%d,", i > 0 ? "," : "", (int)rows[i].pid);
    if (with_gpu)
      printf("\"gpu\":%d,", rows[i].gpu);
    printf("\"resident_bytes\":%zu}", rows[i].resident_bytes);
  }
  printf("]");
}

static void json_unknown(int known, memsleep_probe_reason_t reason, const char *detail) {
  printf("\"known\":%s,\"reason\":", known ? "true" : "false");
  if (known)
    printf("null,\"detail\":null");
  else {
    json_string(memsleep_probe_reason_name(reason));
    printf(",\"detail\":");
    json_string(detail);
  }
}

/* The whole measurement, and the gate's verdict (NULL: no gate), as one JSON object. */
static void print_json(const options_t *o, const measurement_t *m, const figure_t *f,
                       const char *verdict, int code, double waited_s) {
  size_t procs = o->gpu ? m->gpu.tree_processes : m->host.tree_processes;
  printf("{\"pid\":%d,\"children\":%s,\"tree_processes\":%zu", (int)o->pid,
         (o->flags & MEMSLEEP_PROBE_NO_CHILDREN) ? "false" : "true", procs);
  if (o->gpu) {
    const memsleep_probe_gpu_result_t *g = &m->gpu;
    printf(",\"gpu\":{");
    json_unknown(g->known, g->reason, g->detail);
    if (g->known) {
      printf(",\"nvml_api\":%d,\"max_bytes\":%zu,\"max_gpu\":%d,\"total_bytes\":%zu,\"gpus\":[",
             g->nvml_api, g->max_bytes, g->max_gpu, g->total_bytes);
      for (size_t i = 0; i < g->gpu_count; i++) {
        printf("%s{\"index\":%u,\"uuid\":", i > 0 ? "," : "", g->gpus[i].index);
        json_string(g->gpus[i].uuid);
        printf(",\"resident_bytes\":%zu,\"processes\":%zu}", g->gpus[i].resident_bytes,
               g->gpus[i].processes);
      }
      printf("],\"procs\":");
      json_procs(g->procs, g->proc_count, 1);
    }
    printf("}");
  }
  if (o->host) {
    const memsleep_probe_host_result_t *h = &m->host;
    printf(",\"host\":{");
    json_unknown(h->known, h->reason, h->detail);
    if (h->known) {
      printf(",\"resident_bytes\":%zu,\"procs\":", h->resident_bytes);
      json_procs(h->procs, h->proc_count, 0);
    }
    printf("}");
  }
  if (verdict != NULL) {
    printf(",\"gate\":{\"figure\":");
    json_string(o->gpu ? "gpu_max" : "host_rss");
    printf(",\"threshold_gib\":%.10g,\"threshold_bytes\":%.0f,\"known\":%s,\"bytes\":",
           o->limit_gib, o->limit_bytes, f->known ? "true" : "false");
    if (f->known)
      printf("%zu", f->bytes);
    else
      printf("null");
    printf(",\"verdict\":");
    json_string(verdict);
    if (o->gate == GATE_WAIT)
      printf(",\"waited_s\":%.3f", waited_s);
    printf("}");
  }
  printf(",\"exit\":%d}\n", code);
}

/* "GPU max 1.250 GiB (GPU 1)" or "host RSS 0.800 GiB" into buf. */
static void describe(const figure_t *f, char *buf, size_t len) {
  if (f->gpu >= 0)
    snprintf(buf, len, "%s %.3f GiB (GPU %d)", f->name, gib(f->bytes), f->gpu);
  else
    snprintf(buf, len, "%s %.3f GiB", f->name, gib(f->bytes));
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_s(double s) {
  if (s <= 0)
    return;
  struct timespec ts;
  ts.tv_sec = (time_t)s;
  ts.tv_nsec = (long)((s - (double)ts.tv_sec) * 1e9);
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
    ;
}

/* Prints the measurement and the verdict; returns the exit code. */
static int report(const options_t *o, const measurement_t *m, int code, const char *verdict,
                  double waited_s) {
  figure_t f = gated_figure(o, m);
  if (o->json) {
    print_json(o, m, &f, verdict, code, waited_s);
  } else {
    print_table(o, m);
    if (verdict != NULL && f.known) {
      char what[96];
      describe(&f, what, sizeof what);
      printf("gate: %s %s %g GiB: %s", what, code == EXIT_PASS ? "<=" : ">", o->limit_gib,
             code == EXIT_PASS ? "pass" : "FAIL");
      if (o->gate == GATE_WAIT)
        printf(" (after %.1f s)", waited_s);
      printf("\n");
    }
  }
  fflush(stdout);
  return code;
}

/* Says on stderr that the figure is unknown and what the gate does about it. */
static void warn_unknown(const options_t *o, const figure_t *f) {
  if (o->fail_closed)
    fprintf(stderr, PROG ": %s of the tree of %d is unknown (%s: %s); failing (--fail-closed)\n",
            f->name, (int)o->pid, f->reason, f->detail);
  else
    fprintf(stderr,
            PROG ": warning: %s of the tree of %d is unknown (%s: %s); passing the gate "
                 "(fail-open; --fail-closed fails instead)\n",
            f->name, (int)o->pid, f->reason, f->detail);
}

/* Exit code for a measurement the gate has unknown. */
static int unknown_code(const options_t *o) {
  return o->fail_closed ? EXIT_ERROR : EXIT_PASS;
}

/* A report, or one gate decision, on the measurement already taken; returns the exit code. */
static int run_once(const options_t *o, measurement_t *m) {
  figure_t f = gated_figure(o, m);
  if (o->gate == GATE_NONE) {
    int code = EXIT_PASS;
    if (o->fail_closed && o->gpu && !m->gpu.known) {
      fprintf(stderr, PROG ": GPU figure unknown (%s: %s); exiting 2 (--fail-closed)\n",
              memsleep_probe_reason_name(m->gpu.reason), m->gpu.detail);
      code = EXIT_ERROR;
    }
    if (o->fail_closed && o->host && !m->host.known) {
      fprintf(stderr, PROG ": host figure unknown (%s: %s); exiting 2 (--fail-closed)\n",
              memsleep_probe_reason_name(m->host.reason), m->host.detail);
      code = EXIT_ERROR;
    }
    return report(o, m, code, NULL, 0);
  }
  if (!f.known) {
    warn_unknown(o, &f);
    return report(o, m, unknown_code(o), o->fail_closed ? "unknown_fail" : "unknown_pass", 0);
  }
  int pass = (double)f.bytes <= o->limit_bytes;
  return report(o, m, pass ? EXIT_PASS : EXIT_ABOVE, pass ? "pass" : "fail", 0);
}

/*
 * --wait-below: decides on the measurement in *m, and while the figure is
 * above the threshold (or unknown under --fail-closed) prints a progress
 * line, sleeps an interval and measures again, until the timeout. Returns
 * the exit code.
 */
static int run_wait(const options_t *o, measurement_t *m) {
  double start = now_s();
  for (;;) {
    double waited = now_s() - start;
    figure_t f = gated_figure(o, m);
    if (f.known && (double)f.bytes <= o->limit_bytes)
      return report(o, m, EXIT_PASS, "pass", waited);
    if (!f.known && (!o->fail_closed || m->exited)) {
      warn_unknown(o, &f);
      return report(o, m, unknown_code(o), o->fail_closed ? "unknown_fail" : "unknown_pass",
                    waited);
    }
    if (waited >= o->timeout_s) {
      if (!f.known) {
        warn_unknown(o, &f);
        return report(o, m, EXIT_ERROR, "unknown_fail", waited);
      }
      char what[96];
      describe(&f, what, sizeof what);
      fprintf(stderr, PROG ": timed out after %.1f s: %s still above %g GiB\n", waited, what,
              o->limit_gib);
      return report(o, m, EXIT_ABOVE, "timeout", waited);
    }
    if (f.known) {
      char what[96];
      describe(&f, what, sizeof what);
      fprintf(stderr, PROG ": waiting: %s > %g GiB, %.1f s of %.1f s\n", what, o->limit_gib, waited,
              o->timeout_s);
    } else {
      fprintf(stderr, PROG ": waiting: %s unknown (%s), %.1f s of %.1f s\n", f.name, f.reason,
              waited, o->timeout_s);
    }
    double left = o->timeout_s - waited;
    sleep_s(left < o->interval_s ? left : o->interval_s);
    int rc = measure(o, m);
    if (rc == MEMSLEEP_ENOTFOUND) {
      /* Its memory went with it; orphaned children are out of sight. */
      m->exited = 1;
      m->gpu.known = m->host.known = 0;
    } else if (rc != 0) {
      fprintf(stderr, PROG ": %s\n", memsleep_last_error());
      return EXIT_ERROR;
    }
  }
}

int main(int argc, char **argv) {
  options_t o;
  int rc = parse_options(argc, argv, &o);
  if (rc != 0)
    return rc < 0 ? EXIT_PASS : rc;
  measurement_t *m = calloc(1, sizeof *m);
  if (m == NULL) {
    fprintf(stderr, PROG ": out of memory\n");
    return EXIT_ERROR;
  }
  rc = measure(&o, m);
  int code;
  if (rc == MEMSLEEP_ENOTFOUND) {
    fprintf(stderr, PROG ": --pid %d: no such process\n", (int)o.pid);
    code = EXIT_ERROR;
  } else if (rc != 0) {
    fprintf(stderr, PROG ": %s: %s\n", memsleep_strerror(rc), memsleep_last_error());
    code = EXIT_ERROR;
  } else {
    code = o.gate == GATE_WAIT ? run_wait(&o, m) : run_once(&o, m);
  }
  free(m);
  return code;
}
