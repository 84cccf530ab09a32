/*
 * path_guard.c - realpath-based containment of model directories (see
 * path_guard.h).
 */
#include "common/path_guard.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int ms__path_roots_add(ms__path_roots_t *r, const char *dir, char *err, size_t errlen) {
  char *real = realpath(dir, NULL);
  if (!real) {
    snprintf(err, errlen, "cannot use %s as an allowed model directory: %s", dir, strerror(errno));
    return -1;
  }
  struct stat st;
  if (stat(real, &st) != 0 || !S_ISDIR(st.st_mode)) {
    snprintf(err, errlen, "cannot use %s as an allowed model directory: not a directory", dir);
    free(real);
    return -1;
  }
  char **d = realloc(r->dirs, (r->n + 1) * sizeof *d);
  if (!d) {
    snprintf(err, errlen, "out of memory adding the allowed model directory %s", dir);
    free(real);
    return -1;
  }
  r->dirs = d;
  r->dirs[r->n++] = real;
  return 0;
}

void ms__path_roots_free(ms__path_roots_t *r) {
  for (size_t i = 0; i < r->n; i++)
    free(r->dirs[i]);
  free(r->dirs);
  r->dirs = NULL;
  r->n = 0;
}

void ms__path_roots_list(const ms__path_roots_t *r, char *out, size_t outlen) {
  size_t o = 0;
  out[0] = '\0';
  for (size_t i = 0; i < r->n && o < outlen; i++) {
    int w = snprintf(out + o, outlen - o, "%s%s", i ? ", " : "", r->dirs[i]);
    if (w < 0)
      break;
    o += (size_t)w;
  }
}

/* 1 when the resolved path real lies in root (or is root): root is a
 * prefix ending at a component boundary. */
static int within(const char *root, const char *real) {
  size_t n = strlen(root);
  if (n == 1 && root[0] == '/')
    return real[0] == '/';
  return strncmp(root, real, n) == 0 && (real[n] == '\0' || real[n] == '/');
}

static int within_any(const ms__path_roots_t *r, const char *real) {
  for (size_t i = 0; i < r->n; i++)
    if (within(r->dirs[i], real))
      return 1;
  return 0;
}

/* 1 when one of the components of s[0..n) is "..". */
static int has_dotdot(const char *s, size_t n) {
  for (size_t i = 0; i < n;) {
    size_t j = i;
    while (j < n && s[j] != '/')
      j++;
    if (j - i == 2 && s[i] == '.' && s[i + 1] == '.')
      return 1;
    i = j + 1;
  }
  return 0;
}

int ms__path_resolve_inside(const ms__path_roots_t *r, const char *path, char **resolved) {
  *resolved = NULL;
  if (!path || !*path || strlen(path) >= PATH_MAX)
    return MS__PATH_OUTSIDE;
  char *real = realpath(path, NULL);
  if (real) {
    if (within_any(r, real)) {
      *resolved = real;
      return MS__PATH_INSIDE;
    }
    free(real);
    return MS__PATH_OUTSIDE;
  }
  if (errno == ENOMEM)
    return MS__PATH_NOMEM;
  /* It does not resolve: judge the deepest ancestor that does. copy holds
   * the path cut after that ancestor; path[cut..] is the part that does
   * not exist. */
  size_t total = strlen(path);
  char *copy = strdup(path);
  if (!copy)
    return MS__PATH_NOMEM;
  size_t end = total;
  int verdict = MS__PATH_OUTSIDE;
  for (;;) {
    while (end > 1 && copy[end - 1] == '/')
      end--;
    size_t slash = end;
    while (slash > 0 && copy[slash - 1] != '/')
      slash--;
    /* slash: index after the last '/' before end (0: none). */
    size_t cut = slash;
    if (has_dotdot(path + cut, total - cut))
      break; /* ".." in the missing part could only climb out */
    const char *parent = ".";
    if (slash == 1) {
      parent = "/";
    } else if (slash > 1) {
      copy[slash - 1] = '\0';
      parent = copy;
    }
    real = realpath(parent, NULL);
    if (real) {
      verdict = within_any(r, real) ? MS__PATH_MISSING : MS__PATH_OUTSIDE;
      free(real);
      break;
    }
    if (errno == ENOMEM) {
      verdict = MS__PATH_NOMEM;
      break;
    }
    if (slash <= 1)
      break;
    end = slash - 1;
  }
  free(copy);
  return verdict;
}
