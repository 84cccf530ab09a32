/*
 * params.c - checks request bodies and turns them into prompts and
 * sampling settings (see params.h).
 */
#include "server/params.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "server/json_util.h"
#include <memsleep/memsleep.h>

#define DEFAULT_MAX_NEW_SGLANG 128
#define DEFAULT_MAX_NEW_OPENAI 16
#define TEMPERATURE_MAX        100.0

/* A field the server does not implement: absent, null, or its neutral
 * number. */
static int neutral_num(const json_t *o, const char *key, double neutral, char *err, size_t errlen) {
  json_t *v = json_object_get(o, key);
  if (!v || json_is_null(v))
    return 0;
  if (!json_is_number(v))
    return ms__errf(err, errlen, "\"%s\" must be a number, not %s", key, ms__json_type_name(v));
  if (json_number_value(v) != neutral)
    return ms__errf(err, errlen,
                    "\"%s\" = %g is not supported by this server; leave it out or send %g", key,
                    json_number_value(v), neutral);
  return 0;
}

/* A field the server does not implement: absent, null, false, or empty. */
static int neutral_empty(const json_t *o, const char *key, char *err, size_t errlen) {
  json_t *v = json_object_get(o, key);
  if (!v || json_is_null(v) || json_is_false(v))
    return 0;
  if ((json_is_string(v) && json_string_length(v) == 0) ||
      (json_is_array(v) && json_array_size(v) == 0) ||
      (json_is_object(v) && json_object_size(v) == 0))
    return 0;
  return ms__errf(err, errlen, "\"%s\" is not supported by this server; leave it out", key);
}

/* A flag the server accepts and ignores: must be a boolean if present. */
static int ignored_bool(const json_t *o, const char *key, char *err, size_t errlen) {
  int b = 0;
  return ms__json_get_bool(o, key, &b, err, errlen);
}

/* Reads an array of token ids into *ids and *n, each in [0, vocab). */
static int parse_ids(const ms__server_t *s, const json_t *arr, const char *key, int **ids,
                     size_t *n, unsigned *status, char *err, size_t errlen) {
  size_t len = json_array_size(arr);
  if (len == 0)
    return ms__errf(err, errlen, "\"%s\" is empty; send at least one token id", key);
  if (json_is_array(json_array_get(arr, 0)))
    return ms__errf(err, errlen,
                    "batched input (a list of prompts in \"%s\") is not supported; send one "
                    "request per prompt",
                    key);
  int *p = malloc(len * sizeof *p);
  if (!p) {
    *status = 500;
    return ms__errf(err, errlen, "out of memory for %zu prompt tokens", len);
  }
  for (size_t i = 0; i < len; i++) {
    json_t *v = json_array_get(arr, i);
    if (!json_is_integer(v)) {
      free(p);
      return ms__errf(err, errlen, "\"%s\"[%zu] must be an integer token id, not %s", key, i,
                      ms__json_type_name(v));
    }
    json_int_t x = json_integer_value(v);
    if (x < 0 || x >= s->vocab_size) {
      free(p);
      return ms__errf(err, errlen,
                      "\"%s\"[%zu] = %lld is out of range; token ids go from 0 to %d (the "
                      "vocabulary size minus one)",
                      key, i, (long long)x, s->vocab_size - 1);
    }
    p[i] = (int)x;
  }
  *ids = p;
  *n = len;
  return 0;
}

/* Tokenizes a non-empty string into *ids and *n. */
static int encode_text(const ms__server_t *s, const json_t *v, const char *key, int **ids,
                       size_t *n, unsigned *status, char *err, size_t errlen) {
  if (!s->tok)
    return ms__errf(err, errlen, "this model has no tokenizer; send input_ids");
  if (json_string_length(v) == 0)
    return ms__errf(err, errlen, "\"%s\" is empty; send some text", key);
  int rc = ms__tokenizer_encode(s->tok, json_string_value(v), json_string_length(v), ids, n);
  if (rc != 0) {
    *status = 500;
    return ms__errf(err, errlen, "cannot tokenize \"%s\": %s", key, memsleep_last_error());
  }
  if (*n == 0) {
    free(*ids);
    *ids = NULL;
    return ms__errf(err, errlen, "\"%s\" gave no tokens; send some text", key);
  }
  for (size_t i = 0; i < *n; i++) {
    if ((*ids)[i] < 0 || (*ids)[i] >= s->vocab_size) {
      int bad = (*ids)[i];
      free(*ids);
      *ids = NULL;
      return ms__errf(err, errlen,
                      "the tokenizer gave id %d, outside the model's vocabulary of %d; the "
                      "tokenizer does not match the model",
                      bad, s->vocab_size);
    }
  }
  return 0;
}

/* stop_token_ids: a list of at most MS__STOP_IDS_MAX ids in the vocab. */
static int parse_stop_ids(const ms__server_t *s, const json_t *o, ms__sampling_t *sp, char *err,
                          size_t errlen) {
  json_t *v = json_object_get(o, "stop_token_ids");
  if (!v || json_is_null(v))
    return 0;
  if (!json_is_array(v))
    return ms__errf(err, errlen, "\"stop_token_ids\" must be a list of token ids, not %s",
                    ms__json_type_name(v));
  if (json_array_size(v) > MS__STOP_IDS_MAX)
    return ms__errf(err, errlen, "\"stop_token_ids\" has %zu ids; at most %d are accepted",
                    json_array_size(v), MS__STOP_IDS_MAX);
  size_t i;
  json_t *x;
  json_array_foreach(v, i, x) {
    if (!json_is_integer(x) || json_integer_value(x) < 0 || json_integer_value(x) >= s->vocab_size)
      return ms__errf(err, errlen, "\"stop_token_ids\"[%zu] must be a token id from 0 to %d", i,
                      s->vocab_size - 1);
    sp->stop_ids[sp->n_stop++] = (int)json_integer_value(x);
  }
  return 0;
}

/* stop strings are not implemented: only null, "" or [] pass. */
static int parse_stop_strings(const json_t *o, char *err, size_t errlen) {
  json_t *v = json_object_get(o, "stop");
  if (!v || json_is_null(v))
    return 0;
  if ((json_is_string(v) && json_string_length(v) == 0) ||
      (json_is_array(v) && json_array_size(v) == 0))
    return 0;
  return ms__errf(err, errlen,
                  "\"stop\" strings are not supported by this server; use stop_token_ids");
}

/* The sampling fields SGLang and OpenAI share: temperature, top_p,
 * top_k, seed, ignore_eos, stop_token_ids and the neutral-only ones. */
static int parse_sampling_common(const ms__server_t *s, const json_t *o, const char *seed_key,
                                 ms__sampling_t *sp, char *err, size_t errlen) {
  double temperature = 1.0, top_p = 1.0;
  long long top_k = -1, seed = -1;
  int ignore_eos = 0;
  if (ms__json_get_num(o, "temperature", 0, TEMPERATURE_MAX, &temperature, err, errlen) ||
      ms__json_get_num(o, "top_p", 0, 1, &top_p, err, errlen) ||
      ms__json_get_int(o, "top_k", -1, 1LL << 30, &top_k, err, errlen) ||
      ms__json_get_int(o, seed_key, 0, INT64_MAX, &seed, err, errlen) ||
      ms__json_get_bool(o, "ignore_eos", &ignore_eos, err, errlen))
    return -1;
  if (top_p <= 0)
    return ms__errf(err, errlen, "\"top_p\" is 0; it must be in (0, 1] (1 keeps every token)");
  if (parse_stop_ids(s, o, sp, err, errlen) || parse_stop_strings(o, err, errlen) ||
      neutral_num(o, "frequency_penalty", 0, err, errlen) ||
      neutral_num(o, "presence_penalty", 0, err, errlen) ||
      neutral_num(o, "repetition_penalty", 1, err, errlen) ||
      neutral_num(o, "min_p", 0, err, errlen) || neutral_num(o, "n", 1, err, errlen) ||
      neutral_empty(o, "logit_bias", err, errlen))
    return -1;
  sp->temperature = (float)temperature;
  sp->top_p = (float)top_p;
  sp->top_k = top_k < 0 ? 0 : (int)top_k;
  if (seed >= 0) {
    sp->seed = (uint64_t)seed;
    sp->has_seed = 1;
  }
  sp->ignore_eos = ignore_eos;
  return 0;
}

/*
 * Sets sp->max_new_tokens from the field key (explicit when sent) so that
 * prompt + new tokens fit the context: a default shrinks, an explicit
 * value that does not fit is an error.
 */
static int parse_max_new(const ms__server_t *s, const json_t *o, const char *key, int default_max,
                         size_t n_prompt, ms__sampling_t *sp, char *err, size_t errlen) {
  long long m = -1;
  if (ms__json_get_int(o, key, 1, s->max_context, &m, err, errlen))
    return -1;
  if (n_prompt >= (size_t)s->max_context)
    return ms__errf(err, errlen,
                    "the prompt has %zu tokens; the context length is %d, which leaves no room "
                    "for new tokens; shorten the prompt",
                    n_prompt, s->max_context);
  size_t room = (size_t)s->max_context - n_prompt;
  if (m < 0) {
    sp->max_new_tokens = (size_t)default_max < room ? default_max : (int)room;
    return 0;
  }
  if ((size_t)m > room)
    return ms__errf(err, errlen,
                    "the prompt (%zu tokens) plus %s (%lld) is more than the context length "
                    "%d; shorten the prompt or ask for at most %zu new tokens",
                    n_prompt, key, m, s->max_context, room);
  sp->max_new_tokens = (int)m;
  return 0;
}

int ms__params_generate(const ms__server_t *srv, const json_t *body, ms__gen_params_t *out,
                        unsigned *status, char *err, size_t errlen) {
  static const char *const top_keys[] = {"text",
                                         "input_ids",
                                         "sampling_params",
                                         "stream",
                                         "rid",
                                         "return_logprob",
                                         "logprob_start_len",
                                         "top_logprobs_num",
                                         "token_ids_logprob",
                                         "return_text_in_logprobs",
                                         "return_hidden_states",
                                         "lora_path",
                                         "image_data",
                                         "custom_logit_processor",
                                         "log_metrics",
                                         NULL};
  static const char *const sp_keys[] = {"max_new_tokens",
                                        "temperature",
                                        "top_p",
                                        "top_k",
                                        "min_p",
                                        "sampling_seed",
                                        "seed",
                                        "ignore_eos",
                                        "stop",
                                        "stop_token_ids",
                                        "frequency_penalty",
                                        "presence_penalty",
                                        "repetition_penalty",
                                        "min_new_tokens",
                                        "n",
                                        "skip_special_tokens",
                                        "spaces_between_special_tokens",
                                        "no_stop_trim",
                                        "json_schema",
                                        "regex",
                                        "ebnf",
                                        "structural_tag",
                                        "custom_params",
                                        "logit_bias",
                                        NULL};
  memset(out, 0, sizeof *out);
  ms__sampling_default(&out->sp);
  *status = 400;
  if (ms__json_only_keys(body, "the request", top_keys, err, errlen) ||
      ms__json_get_bool(body, "stream", &out->stream, err, errlen) ||
      ignored_bool(body, "return_text_in_logprobs", err, errlen) ||
      ignored_bool(body, "log_metrics", err, errlen) ||
      neutral_empty(body, "return_logprob", err, errlen) ||
      neutral_empty(body, "return_hidden_states", err, errlen) ||
      neutral_empty(body, "lora_path", err, errlen) ||
      neutral_empty(body, "image_data", err, errlen) ||
      neutral_empty(body, "custom_logit_processor", err, errlen) ||
      neutral_empty(body, "token_ids_logprob", err, errlen))
    return -1;
  json_t *rid = json_object_get(body, "rid");
  if (rid && !json_is_null(rid) && !json_is_string(rid))
    return ms__errf(err, errlen, "\"rid\" must be a string, not %s", ms__json_type_name(rid));

  json_t *text = json_object_get(body, "text");
  json_t *ids = json_object_get(body, "input_ids");
  if (text && json_is_null(text))
    text = NULL;
  if (ids && json_is_null(ids))
    ids = NULL;
  if (text && ids)
    return ms__errf(err, errlen, "send either \"text\" or \"input_ids\", not both");
  if (!text && !ids)
    return ms__errf(err, errlen, "the request has no prompt; send \"text\" or \"input_ids\"");
  int rc;
  if (text) {
    if (json_is_array(text))
      return ms__errf(err, errlen,
                      "batched input (a list in \"text\") is not supported; send one request "
                      "per prompt");
    if (!json_is_string(text))
      return ms__errf(err, errlen, "\"text\" must be a string, not %s", ms__json_type_name(text));
    rc = encode_text(srv, text, "text", &out->prompt, &out->n_prompt, status, err, errlen);
  } else {
    if (!json_is_array(ids))
      return ms__errf(err, errlen, "\"input_ids\" must be a list of token ids, not %s",
                      ms__json_type_name(ids));
    rc = parse_ids(srv, ids, "input_ids", &out->prompt, &out->n_prompt, status, err, errlen);
  }
  if (rc)
    return -1;

  json_t *sp = json_object_get(body, "sampling_params");
  json_t *empty = NULL;
  if (!sp || json_is_null(sp))
    sp = empty = json_object();
  if (!json_is_object(sp)) {
    ms__params_free(out);
    return ms__errf(err, errlen, "\"sampling_params\" must be an object, not %s",
                    ms__json_type_name(sp));
  }
  rc = ms__json_only_keys(sp, "sampling_params", sp_keys, err, errlen) ||
       parse_sampling_common(srv, sp,
                             json_object_get(sp, "sampling_seed") ? "sampling_seed" : "seed",
                             &out->sp, err, errlen) ||
       parse_max_new(srv, sp, "max_new_tokens", DEFAULT_MAX_NEW_SGLANG, out->n_prompt, &out->sp,
                     err, errlen) ||
       neutral_num(sp, "min_new_tokens", 0, err, errlen) ||
       ignored_bool(sp, "skip_special_tokens", err, errlen) ||
       ignored_bool(sp, "spaces_between_special_tokens", err, errlen) ||
       ignored_bool(sp, "no_stop_trim", err, errlen) ||
       neutral_empty(sp, "json_schema", err, errlen) || neutral_empty(sp, "regex", err, errlen) ||
       neutral_empty(sp, "ebnf", err, errlen) || neutral_empty(sp, "structural_tag", err, errlen) ||
       neutral_empty(sp, "custom_params", err, errlen);
  json_decref(empty);
  if (rc) {
    ms__params_free(out);
    return -1;
  }
  return 0;
}

int ms__params_completions(const ms__server_t *srv, const json_t *body, ms__gen_params_t *out,
                           unsigned *status, char *err, size_t errlen) {
  static const char *const keys[] = {"model",
                                     "prompt",
                                     "max_tokens",
                                     "temperature",
                                     "top_p",
                                     "top_k",
                                     "min_p",
                                     "seed",
                                     "ignore_eos",
                                     "stop",
                                     "stop_token_ids",
                                     "frequency_penalty",
                                     "presence_penalty",
                                     "repetition_penalty",
                                     "n",
                                     "best_of",
                                     "stream",
                                     "stream_options",
                                     "echo",
                                     "logprobs",
                                     "logit_bias",
                                     "suffix",
                                     "user",
                                     "min_tokens",
                                     "skip_special_tokens",
                                     NULL};
  memset(out, 0, sizeof *out);
  ms__sampling_default(&out->sp);
  *status = 400;
  if (ms__json_only_keys(body, "the request", keys, err, errlen) ||
      ms__json_get_bool(body, "stream", &out->stream, err, errlen) ||
      neutral_num(body, "best_of", 1, err, errlen) ||
      neutral_num(body, "min_tokens", 0, err, errlen) || neutral_empty(body, "echo", err, errlen) ||
      neutral_empty(body, "logprobs", err, errlen) || neutral_empty(body, "suffix", err, errlen) ||
      ignored_bool(body, "skip_special_tokens", err, errlen))
    return -1;
  json_t *model = json_object_get(body, "model");
  if (model && !json_is_null(model)) {
    if (!json_is_string(model))
      return ms__errf(err, errlen, "\"model\" must be a string, not %s", ms__json_type_name(model));
    snprintf(out->model, sizeof out->model, "%s", json_string_value(model));
  }
  json_t *user = json_object_get(body, "user");
  if (user && !json_is_null(user) && !json_is_string(user))
    return ms__errf(err, errlen, "\"user\" must be a string, not %s", ms__json_type_name(user));
  json_t *so = json_object_get(body, "stream_options");
  if (so && !json_is_null(so)) {
    static const char *const so_keys[] = {"include_usage", "continuous_usage_stats", NULL};
    if (!json_is_object(so))
      return ms__errf(err, errlen, "\"stream_options\" must be an object, not %s",
                      ms__json_type_name(so));
    if (ms__json_only_keys(so, "stream_options", so_keys, err, errlen) ||
        ms__json_get_bool(so, "include_usage", &out->include_usage, err, errlen) ||
        neutral_empty(so, "continuous_usage_stats", err, errlen))
      return -1;
  }

  json_t *p = json_object_get(body, "prompt");
  if (!p || json_is_null(p))
    return ms__errf(err, errlen, "the request has no \"prompt\"; send a string or token ids");
  /* A batch of one ("prompt": ["text"] or [[1, 2]]) is the same as one. */
  if (json_is_array(p) && json_array_size(p) == 1 &&
      (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0))))
    p = json_array_get(p, 0);
  int rc;
  if (json_is_string(p)) {
    rc = encode_text(srv, p, "prompt", &out->prompt, &out->n_prompt, status, err, errlen);
  } else if (json_is_array(p)) {
    if (json_array_size(p) > 0 && json_is_string(json_array_get(p, 0)))
      return ms__errf(err, errlen,
                      "batched prompts are not supported; send one request per prompt");
    rc = parse_ids(srv, p, "prompt", &out->prompt, &out->n_prompt, status, err, errlen);
  } else {
    return ms__errf(err, errlen, "\"prompt\" must be a string or a list of token ids, not %s",
                    ms__json_type_name(p));
  }
  if (rc)
    return -1;
  if (parse_sampling_common(srv, body, "seed", &out->sp, err, errlen) ||
      parse_max_new(srv, body, "max_tokens", DEFAULT_MAX_NEW_OPENAI, out->n_prompt, &out->sp, err,
                    errlen)) {
    ms__params_free(out);
    return -1;
  }
  return 0;
}

void ms__params_free(ms__gen_params_t *p) {
  free(p->prompt);
  p->prompt = NULL;
  p->n_prompt = 0;
}
