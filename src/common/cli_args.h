/*
 * cli_args.h - command-line value parsing shared by memsleep's programs.
 *
 * For main() of a program only: on a bad value it prints a message naming
 * the program, the option and the accepted range, and exits with status 2
 * (the usage-error status of every memsleep tool). Library code never
 * calls it.
 */
#ifndef MEMSLEEP_COMMON_CLI_ARGS_H
#define MEMSLEEP_COMMON_CLI_ARGS_H

/* Parses arg, the value of option --name of program prog, as a base-10
 * integer in [min, max]; exits 2 with a message otherwise. */
long long ms__cli_num(const char *prog, const char *name, const char *arg, long long min,
                      long long max);

/*
 * A key (an API key) of program prog: arg, the value of option --name when
 * it was given (NULL otherwise), else the environment variable env when it
 * is set and not empty, else NULL. A key must be 1 to 4096 visible ASCII
 * characters (no spaces: it travels as "Authorization: Bearer KEY"); any
 * other value exits 2 with a message that does not print the key. A key
 * shorter than 16 characters is accepted with a warning on stderr.
 */
const char *ms__cli_key(const char *prog, const char *name, const char *arg, const char *env);

#endif /* MEMSLEEP_COMMON_CLI_ARGS_H */
