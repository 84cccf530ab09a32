/*
 * memsleepctl - talks to a memsleep-serve over HTTP (libcurl).
 *
 * The command line for people and scripts: generate text (streamed or
 * not), print the server's info, health or metrics, flush the prefix
 * cache, and drive the sleep/wake control plane (release, resume,
 * is-sleeping, pause, continue, update-weights, sleep, wake-up; see
 * docs/control-plane.md). Errors from the server are printed as the server
 * wrote them ({"error": ...}). Keys come from the environment only
 * (MEMSLEEP_API_KEY, MEMSLEEP_ADMIN_API_KEY), never the command line, so
 * that they do not show in ps: the sleep/wake verbs and flush-cache send
 * the admin key, the others the API key, each falling back on the other
 * when only one is set (docs/security.md).
 *
 * Exit status: 0 success; 1 the server answered with an error; 2 bad
 * command line; 3 the server could not be reached.
 */
#include <curl/curl.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define EXIT_SERVER  1
#define EXIT_USAGE   2
#define EXIT_CONNECT 3

static void usage(FILE *f) {
  fprintf(f, "usage: memsleepctl [--url URL] [--timeout S] COMMAND [options]\n"
             "\n"
             "Talks to a memsleep-serve or a memsleep-lb (default URL http://127.0.0.1:30000,\n"
             "or $MEMSLEEP_URL). Keys come from the environment: $MEMSLEEP_API_KEY is sent\n"
             "with generate, info, health, metrics and is-sleeping, $MEMSLEEP_ADMIN_API_KEY\n"
             "with the verbs that change the server's state (each stands in for the other\n"
             "when only one is set), as \"Authorization: Bearer KEY\".\n"
             "\n"
             "commands:\n"
             "  generate [options] TEXT   generate a continuation of TEXT and print it\n"
             "      --max-new-tokens N    tokens to generate at most (default 32)\n"
             "      --temperature X       0 is greedy (default 0)\n"
             "      --top-p X, --top-k N  nucleus / top-k sampling\n"
             "      --seed N              same seed, same output\n"
             "      --ignore-eos          do not stop at the end-of-sequence token\n"
             "      --stream              print tokens as they come (server-sent events)\n"
             "      --json                print the server's JSON answer instead of the text\n"
             "  info                      print GET /get_server_info (JSON)\n"
             "  health [--generate]       check /health (or /health_generate: one real token)\n"
             "  metrics                   print GET /metrics (Prometheus text)\n"
             "  flush-cache               drop the server's prefix cache\n"
             "\n"
             "sleep/wake (the answers are the server's JSON):\n"
             "  release [--tags a,b] [--no-backup] [--timeout S]\n"
             "                            drain, then release memory (tags: weights, kv_cache,\n"
             "                            workspace, cuda_graph on a GPU server with CUDA\n"
             "                            graphs; default every awake tag); --no-backup\n"
             "                            discards the weights; S: drain timeout (default 60)\n"
             "  resume [--tags a,b]       wake memory (default: exactly the released tags)\n"
             "  is-sleeping               print the sleep/pause state\n"
             "  pause [--mode M]          pause generation: abort (default), wait or keep\n"
             "  continue                  lift the pause (refused while memory is released)\n"
             "  update-weights PATH       reload the weights in place from model directory PATH\n"
             "  sleep --level N           vLLM-style: 1 release all, 2 also discard the weights\n"
             "  wake-up [--tags a,b]      vLLM-style: wake the given (default: released) tags\n"
             "\n"
             "exit status: 0 ok, 1 the server answered with an error, 2 bad command line,\n"
             "3 the server could not be reached.\n");
}

/* A response body being received. */
typedef struct body {
  char *s;
  size_t len, cap;
} body_t;

static int body_add(body_t *b, const char *p, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 4096;
    while (cap < b->len + n + 1)
      cap *= 2;
    char *s = realloc(b->s, cap);
    if (!s)
      return -1;
    b->s = s;
    b->cap = cap;
  }
  memcpy(b->s + b->len, p, n);
  b->len += n;
  b->s[b->len] = '\0';
  return 0;
}

/* State of a streamed generate: events are cut out of buf as they come. */
typedef struct stream {
  CURL *curl;
  body_t buf;
  int done;        /* [DONE] seen */
  int failed;      /* an event carried an error */
  long tokens;     /* completion tokens reported */
  char finish[32]; /* finish reason type */
} stream_t;

static size_t on_body(char *p, size_t size, size_t n, void *user) {
  return body_add(user, p, size * n) == 0 ? size * n : 0;
}

/* Handles one SSE event's data: prints its text. */
static void stream_event(stream_t *st, const char *data) {
  if (strcmp(data, "[DONE]") == 0) {
    st->done = 1;
    return;
  }
  json_t *j = json_loads(data, 0, NULL);
  if (!j)
    return;
  json_t *text = json_object_get(j, "text");
  if (json_is_string(text)) {
    fwrite(json_string_value(text), 1, json_string_length(text), stdout);
    fflush(stdout);
  }
  json_t *meta = json_object_get(j, "meta_info");
  json_t *fr = json_object_get(meta, "finish_reason");
  if (json_is_object(fr)) {
    const char *type = json_string_value(json_object_get(fr, "type"));
    snprintf(st->finish, sizeof st->finish, "%s", type ? type : "?");
    st->tokens = (long)json_integer_value(json_object_get(meta, "completion_tokens"));
    if (type && (strcmp(type, "abort") == 0 || strcmp(type, "error") == 0)) {
      const char *msg = json_string_value(json_object_get(fr, "message"));
      fprintf(stderr, "\nmemsleepctl: generation ended early (%s): %s\n", type,
              msg ? msg : "no detail");
      st->failed = 1;
    }
  }
  json_decref(j);
}

/* Streaming write callback: once the status is 200, cuts "data: ...\n\n"
 * events out of the bytes as they arrive; otherwise keeps the body for the
 * error message. */
static size_t on_stream(char *p, size_t size, size_t n, void *user) {
  stream_t *st = user;
  if (body_add(&st->buf, p, size * n) != 0)
    return 0;
  long code = 0;
  curl_easy_getinfo(st->curl, CURLINFO_RESPONSE_CODE, &code);
  if (code != 200)
    return size * n;
  char *end;
  while ((end = strstr(st->buf.s, "\n\n")) != NULL) {
    *end = '\0';
    for (char *line = st->buf.s; line && *line;) {
      char *nl = strchr(line, '\n');
      if (nl)
        *nl = '\0';
      if (strncmp(line, "data: ", 6) == 0)
        stream_event(st, line + 6);
      line = nl ? nl + 1 : NULL;
    }
    size_t used = (size_t)(end + 2 - st->buf.s);
    memmove(st->buf.s, end + 2, st->buf.len - used + 1);
    st->buf.len -= used;
  }
  return size * n;
}

/* Prints the server's error answer (its "error" field when it is JSON). */
static int server_error(long code, const body_t *b) {
  json_t *j = b->s ? json_loads(b->s, 0, NULL) : NULL;
  const char *msg = json_string_value(json_object_get(j, "error"));
  fprintf(stderr, "memsleepctl: the server answered %ld: %s\n", code,
          msg ? msg : (b->s ? b->s : "(no body)"));
  if (code == 401)
    fprintf(stderr, "memsleepctl: set MEMSLEEP_API_KEY (generation, info) and "
                    "MEMSLEEP_ADMIN_API_KEY (sleep/wake verbs) to the server's keys\n");
  json_decref(j);
  return EXIT_SERVER;
}

/* The key to send with path (body: a POST), from the environment: the
 * admin key for what changes the server's state, the API key otherwise,
 * each standing in for the other. NULL when neither is set. */
static const char *key_for(const char *path, const char *body) {
  const char *api = getenv("MEMSLEEP_API_KEY"), *admin = getenv("MEMSLEEP_ADMIN_API_KEY");
  if (api && !*api)
    api = NULL;
  if (admin && !*admin)
    admin = NULL;
  int changes_state = body && strcmp(path, "/generate") != 0;
  return changes_state ? (admin ? admin : api) : (api ? api : admin);
}

/*
 * Sends one request (body NULL: GET, else POST of JSON) to url + path.
 * With st, the answer streams through on_stream; else it is collected in
 * *out. Returns 0 with *code set, or EXIT_CONNECT after printing why.
 */
static int request(const char *url, const char *path, const char *body, long timeout_s,
                   stream_t *st, body_t *out, long *code) {
  CURL *c = curl_easy_init();
  if (!c) {
    fprintf(stderr, "memsleepctl: cannot initialise libcurl\n");
    return EXIT_CONNECT;
  }
  char full[2048];
  snprintf(full, sizeof full, "%s%s", url, path);
  struct curl_slist *h = NULL;
  curl_easy_setopt(c, CURLOPT_URL, full);
  curl_easy_setopt(c, CURLOPT_TIMEOUT, timeout_s);
  curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 10L);
  curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
  const char *key = key_for(path, body);
  if (key) {
    size_t n = strlen(key) + 32;
    char *auth = malloc(n);
    if (auth) {
      snprintf(auth, n, "Authorization: Bearer %s", key);
      h = curl_slist_append(h, auth);
      free(auth);
    }
  }
  if (body) {
    h = curl_slist_append(h, "Content-Type: application/json");
    curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
  }
  if (h)
    curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
  if (st) {
    st->curl = c;
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_stream);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, st);
  } else {
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
  }
  CURLcode rc = curl_easy_perform(c);
  curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, code);
  curl_slist_free_all(h);
  curl_easy_cleanup(c);
  if (rc != CURLE_OK) {
    fprintf(stderr, "memsleepctl: %s: %s (is memsleep-serve running there? see --url)\n", full,
            curl_easy_strerror(rc));
    return EXIT_CONNECT;
  }
  return 0;
}

/* Parses a number option; exits with usage status when it is not one. */
static double num_arg(const char *name, const char *arg, double min, double max) {
  char *end;
  errno = 0;
  double v = strtod(arg, &end);
  if (errno || end == arg || *end || v < min || v > max) {
    fprintf(stderr, "memsleepctl: %s '%s' is not a number from %g to %g\n", name, arg, min, max);
    exit(EXIT_USAGE);
  }
  return v;
}

static int cmd_generate(const char *url, long timeout_s, int argc, char **argv) {
  static const struct option opts[] = {{"max-new-tokens", required_argument, NULL, 'n'},
                                       {"temperature", required_argument, NULL, 't'},
                                       {"top-p", required_argument, NULL, 'p'},
                                       {"top-k", required_argument, NULL, 'k'},
                                       {"seed", required_argument, NULL, 's'},
                                       {"ignore-eos", no_argument, NULL, 'e'},
                                       {"stream", no_argument, NULL, 'S'},
                                       {"json", no_argument, NULL, 'j'},
                                       {"help", no_argument, NULL, 'h'},
                                       {NULL, 0, NULL, 0}};
  json_t *sp = json_object();
  json_object_set_new(sp, "max_new_tokens", json_integer(32));
  json_object_set_new(sp, "temperature", json_real(0));
  int stream = 0, as_json = 0, c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    switch (c) {
    case 'n':
      json_object_set_new(sp, "max_new_tokens",
                          json_integer((json_int_t)num_arg("--max-new-tokens", optarg, 1, 1e9)));
      break;
    case 't':
      json_object_set_new(sp, "temperature", json_real(num_arg("--temperature", optarg, 0, 100)));
      break;
    case 'p':
      json_object_set_new(sp, "top_p", json_real(num_arg("--top-p", optarg, 0, 1)));
      break;
    case 'k':
      json_object_set_new(sp, "top_k",
                          json_integer((json_int_t)num_arg("--top-k", optarg, -1, 1e9)));
      break;
    case 's':
      json_object_set_new(sp, "sampling_seed",
                          json_integer((json_int_t)num_arg("--seed", optarg, 0, 9e15)));
      break;
    case 'e':
      json_object_set_new(sp, "ignore_eos", json_true());
      break;
    case 'S':
      stream = 1;
      break;
    case 'j':
      as_json = 1;
      break;
    case 'h':
      usage(stdout);
      json_decref(sp);
      return 0;
    default:
      json_decref(sp);
      return EXIT_USAGE;
    }
  }
  if (optind + 1 != argc) {
    fprintf(stderr, "memsleepctl: generate takes one TEXT argument (quote it); see --help\n");
    json_decref(sp);
    return EXIT_USAGE;
  }
  json_t *req = json_pack("{s:s,s:o,s:b}", "text", argv[optind], "sampling_params", sp, "stream",
                          stream && !as_json);
  char *body = json_dumps(req, JSON_COMPACT);
  json_decref(req);
  long code = 0;
  int rc;
  if (stream && !as_json) {
    stream_t st;
    memset(&st, 0, sizeof st);
    rc = request(url, "/generate", body, timeout_s, &st, NULL, &code);
    if (rc == 0 && code != 200)
      rc = server_error(code, &st.buf);
    else if (rc == 0 && (!st.done || st.failed)) {
      if (!st.done && !st.failed)
        fprintf(stderr, "\nmemsleepctl: the stream ended without [DONE]\n");
      rc = EXIT_SERVER;
    } else if (rc == 0) {
      printf("\n");
      fflush(stdout);
      fprintf(stderr, "memsleepctl: %ld tokens, finish: %s\n", st.tokens, st.finish);
    }
    free(st.buf.s);
  } else {
    body_t out = {0};
    rc = request(url, "/generate", body, timeout_s, NULL, &out, &code);
    if (rc == 0 && code != 200) {
      rc = server_error(code, &out);
    } else if (rc == 0 && as_json) {
      printf("%s\n", out.s ? out.s : "");
    } else if (rc == 0) {
      json_t *j = json_loads(out.s ? out.s : "", 0, NULL);
      json_t *text = json_object_get(j, "text");
      json_t *meta = json_object_get(j, "meta_info");
      if (!json_is_string(text)) {
        fprintf(stderr, "memsleepctl: the answer has no text: %s\n", out.s ? out.s : "");
        rc = EXIT_SERVER;
      } else {
        fwrite(json_string_value(text), 1, json_string_length(text), stdout);
        printf("\n");
        fflush(stdout);
        const char *fin =
            json_string_value(json_object_get(json_object_get(meta, "finish_reason"), "type"));
        fprintf(stderr, "memsleepctl: %lld tokens, finish: %s\n",
                (long long)json_integer_value(json_object_get(meta, "completion_tokens")),
                fin ? fin : "?");
      }
      json_decref(j);
    }
    free(out.s);
  }
  free(body);
  return rc;
}

/* GET (or POST when post) path; prints the body on success. */
static int cmd_simple(const char *url, long timeout_s, const char *path, int post) {
  body_t out = {0};
  long code = 0;
  int rc = request(url, path, post ? "{}" : NULL, timeout_s, NULL, &out, &code);
  if (rc == 0 && (code < 200 || code > 299))
    rc = server_error(code, &out);
  else if (rc == 0)
    printf("%s%s", out.s ? out.s : "", out.len && out.s[out.len - 1] == '\n' ? "" : "\n");
  free(out.s);
  return rc;
}

/* POST body (a JSON object, consumed) to path; prints the answer. */
static int post_json(const char *url, long timeout_s, const char *path, json_t *body) {
  char *s = json_dumps(body, JSON_COMPACT);
  json_decref(body);
  if (!s) {
    fprintf(stderr, "memsleepctl: out of memory\n");
    return EXIT_SERVER;
  }
  body_t out = {0};
  long code = 0;
  int rc = request(url, path, s, timeout_s, NULL, &out, &code);
  if (rc == 0 && (code < 200 || code > 299))
    rc = server_error(code, &out);
  else if (rc == 0)
    printf("%s%s", out.s ? out.s : "", out.len && out.s[out.len - 1] == '\n' ? "" : "\n");
  free(out.s);
  free(s);
  return rc;
}

/* "a,b" as a JSON list of strings (the server checks the names). */
static json_t *tag_list(const char *arg) {
  json_t *a = json_array();
  for (const char *p = arg;;) {
    const char *e = strchr(p, ',');
    size_t n = e ? (size_t)(e - p) : strlen(p);
    json_array_append_new(a, json_stringn(p, n));
    if (!e)
      break;
    p = e + 1;
  }
  return a;
}

/*
 * The sleep/wake verbs: release, resume, pause, update-weights, sleep,
 * wake-up (the ones with options; is-sleeping and continue go through
 * cmd_simple). argv[0] is the verb.
 */
static int cmd_control(const char *url, long timeout_s, int argc, char **argv) {
  static const struct option opts[] = {
      {"tags", required_argument, NULL, 't'},    {"no-backup", no_argument, NULL, 'b'},
      {"timeout", required_argument, NULL, 'T'}, {"mode", required_argument, NULL, 'm'},
      {"level", required_argument, NULL, 'l'},   {NULL, 0, NULL, 0}};
  const char *verb = argv[0];
  int is_release = strcmp(verb, "release") == 0, is_resume = strcmp(verb, "resume") == 0;
  int is_pause = strcmp(verb, "pause") == 0, is_sleep = strcmp(verb, "sleep") == 0;
  int is_wake = strcmp(verb, "wake-up") == 0, is_update = strcmp(verb, "update-weights") == 0;
  json_t *body = json_object();
  const char *tags = NULL;
  int level = 0, c;
  optind = 1;
  while ((c = getopt_long(argc, argv, "", opts, NULL)) != -1) {
    int ok = 1;
    switch (c) {
    case 't':
      ok = is_release || is_resume || is_wake;
      tags = optarg;
      break;
    case 'b':
      ok = is_release;
      json_object_set_new(body, "backup", json_false());
      break;
    case 'T': {
      ok = is_release;
      double t = num_arg("--timeout", optarg, 0.001, 3600);
      json_object_set_new(body, "timeout", json_real(t));
      if ((long)t + 30 > timeout_s)
        timeout_s = (long)t + 30; /* the answer comes after the drain */
      break;
    }
    case 'm':
      ok = is_pause;
      json_object_set_new(body, "mode", json_string(optarg));
      break;
    case 'l':
      ok = is_sleep;
      level = (int)num_arg("--level", optarg, 1, 2);
      break;
    default:
      ok = 0;
    }
    if (!ok) {
      fprintf(stderr, "memsleepctl: %s does not take that option (see --help)\n", verb);
      json_decref(body);
      return EXIT_USAGE;
    }
  }
  int want_args = is_update ? 1 : 0;
  if (argc - optind != want_args) {
    fprintf(stderr, "memsleepctl: %s %s (see --help)\n", verb,
            is_update ? "takes one model directory PATH" : "takes no arguments");
    json_decref(body);
    return EXIT_USAGE;
  }
  if (is_sleep && level == 0) {
    fprintf(stderr, "memsleepctl: sleep needs --level 1 or --level 2\n");
    json_decref(body);
    return EXIT_USAGE;
  }
  if (tags && !is_wake)
    json_object_set_new(body, "tags", tag_list(tags));
  char path[512];
  if (is_release) {
    snprintf(path, sizeof path, "/release_memory_occupation");
  } else if (is_resume) {
    snprintf(path, sizeof path, "/resume_memory_occupation");
  } else if (is_pause) {
    snprintf(path, sizeof path, "/pause_generation");
  } else if (is_update) {
    snprintf(path, sizeof path, "/update_weights_from_disk");
    json_object_set_new(body, "model_path", json_string(argv[optind]));
  } else if (is_sleep) {
    snprintf(path, sizeof path, "/sleep?level=%d", level);
  } else {
    /* Tag names are plain words; anything else is left for the server to
     * refuse, escaped so that it stays one query argument. */
    snprintf(path, sizeof path, "/wake_up");
    if (tags) {
      size_t o = strlen(path);
      o += (size_t)snprintf(path + o, sizeof path - o, "?tags=");
      for (const char *p = tags; *p && o + 4 < sizeof path; p++) {
        unsigned char ch = (unsigned char)*p;
        if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
            ch == '_' || ch == ',' || ch == '-')
          path[o++] = (char)ch;
        else
          o += (size_t)snprintf(path + o, sizeof path - o, "%%%02X", ch);
      }
      path[o] = '\0';
    }
  }
  return post_json(url, timeout_s, path, body);
}

int main(int argc, char **argv) {
  const char *url = getenv("MEMSLEEP_URL");
  if (!url || !*url)
    url = "http://127.0.0.1:30000";
  long timeout_s = 600;
  int i = 1;
  for (; i < argc && argv[i][0] == '-'; i++) {
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    } else if (strcmp(argv[i], "--url") == 0 && i + 1 < argc) {
      url = argv[++i];
    } else if (strcmp(argv[i], "--timeout") == 0 && i + 1 < argc) {
      timeout_s = (long)num_arg("--timeout", argv[++i], 1, 86400);
    } else {
      fprintf(stderr, "memsleepctl: unknown option '%s' (see --help)\n", argv[i]);
      return EXIT_USAGE;
    }
  }
  if (i >= argc) {
    usage(stderr);
    return EXIT_USAGE;
  }
  /* A URL given with a trailing slash would double it before the path. */
  char base[1024];
  snprintf(base, sizeof base, "%s", url);
  size_t bl = strlen(base);
  while (bl > 0 && base[bl - 1] == '/')
    base[--bl] = '\0';
  const char *cmd = argv[i];
  curl_global_init(CURL_GLOBAL_DEFAULT);
  int rc;
  if (strcmp(cmd, "generate") == 0) {
    rc = cmd_generate(base, timeout_s, argc - i, argv + i);
  } else if (strcmp(cmd, "info") == 0 && argc - i == 1) {
    rc = cmd_simple(base, timeout_s, "/get_server_info", 0);
  } else if (strcmp(cmd, "health") == 0 && argc - i <= 2) {
    int gen = argc - i == 2 && strcmp(argv[i + 1], "--generate") == 0;
    if (argc - i == 2 && !gen) {
      fprintf(stderr, "memsleepctl: health takes only --generate\n");
      rc = EXIT_USAGE;
    } else {
      rc = cmd_simple(base, timeout_s, gen ? "/health_generate" : "/health", 0);
    }
  } else if (strcmp(cmd, "metrics") == 0 && argc - i == 1) {
    rc = cmd_simple(base, timeout_s, "/metrics", 0);
  } else if (strcmp(cmd, "flush-cache") == 0 && argc - i == 1) {
    rc = cmd_simple(base, timeout_s, "/flush_cache", 1);
  } else if (strcmp(cmd, "is-sleeping") == 0 && argc - i == 1) {
    rc = cmd_simple(base, timeout_s, "/is_sleeping", 0);
  } else if (strcmp(cmd, "continue") == 0 && argc - i == 1) {
    rc = cmd_simple(base, timeout_s, "/continue_generation", 1);
  } else if (strcmp(cmd, "release") == 0 || strcmp(cmd, "resume") == 0 ||
             strcmp(cmd, "pause") == 0 || strcmp(cmd, "update-weights") == 0 ||
             strcmp(cmd, "sleep") == 0 || strcmp(cmd, "wake-up") == 0) {
    rc = cmd_control(base, timeout_s, argc - i, argv + i);
  } else {
    fprintf(stderr, "memsleepctl: unknown command or extra arguments: '%s' (see --help)\n", cmd);
    rc = EXIT_USAGE;
  }
  curl_global_cleanup();
  return rc;
}
