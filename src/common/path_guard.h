/*
 * path_guard.h - the directories a server may read models from.
 *
 * /update_weights_from_disk reads whatever directory a caller names; the
 * guard keeps it to directories under a list of allowed roots. Roots and
 * requested paths are both resolved with realpath (every symlink followed,
 * every "." and ".." applied), then compared component by component, so
 * neither "ROOT/../etc" nor a symlink inside a root that points elsewhere
 * gets out. The path checked is the path loaded: the caller loads from the
 * resolved path this returns, not from what was sent.
 *
 * Files inside an allowed directory are read as they are (a Hugging Face
 * cache keeps its files as symlinks to blobs): whoever can write into an
 * allowed root is trusted (docs/security.md).
 */
#ifndef MEMSLEEP_COMMON_PATH_GUARD_H
#define MEMSLEEP_COMMON_PATH_GUARD_H

#include <stddef.h>

typedef struct ms__path_roots {
  char **dirs; /* resolved absolute paths, no trailing '/' (but "/" itself) */
  size_t n;
} ms__path_roots_t;

/* What ms__path_resolve_inside found. */
#define MS__PATH_INSIDE  0  /* inside a root: *resolved is set */
#define MS__PATH_OUTSIDE -1 /* outside every root, or reaches out with ".." */
#define MS__PATH_MISSING -2 /* would be inside a root but does not exist */
#define MS__PATH_NOMEM   -3 /* out of memory */

/*
 * Adds dir, which must be an existing directory, as a root. Returns 0, or
 * -1 with a message naming dir and why in err.
 */
int ms__path_roots_add(ms__path_roots_t *r, const char *dir, char *err, size_t errlen);

/* Frees the roots; r is empty afterwards. */
void ms__path_roots_free(ms__path_roots_t *r);

/* Writes the roots, comma-separated, into out (for messages). */
void ms__path_roots_list(const ms__path_roots_t *r, char *out, size_t outlen);

/*
 * Resolves path (absolute, or relative to the working directory) and
 * checks it against the roots: MS__PATH_INSIDE with *resolved set (the
 * caller frees it) when it lies in one of them (or is one). A path that
 * does not exist is judged by its deepest existing ancestor: inside a root,
 * MS__PATH_MISSING; else MS__PATH_OUTSIDE. A path that does not exist and
 * climbs with ".." past the part that does is MS__PATH_OUTSIDE, so the
 * answer never tells whether something exists outside the roots.
 */
int ms__path_resolve_inside(const ms__path_roots_t *r, const char *path, char **resolved);

#endif /* MEMSLEEP_COMMON_PATH_GUARD_H */
