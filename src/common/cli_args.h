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

#endif /* MEMSLEEP_COMMON_CLI_ARGS_H */
