// Invariant checks. A broken invariant is a bug in hyla, never bad input: it aborts with file
// and line. Bad input is reported with absl::Status instead.
#ifndef HYLA_RUNTIME_BASE_CHECK_H_
#define HYLA_RUNTIME_BASE_CHECK_H_

#include <cstdio>
#include <cstdlib>

#define HYLA_CHECK(cond)                                                                 \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      std::fprintf(stderr, "%s:%d: HYLA_CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                      \
    }                                                                                    \
  } while (0)

#define HYLA_CHECK_MSG(cond, msg)                                                           \
  do {                                                                                      \
    if (!(cond)) {                                                                          \
      std::fprintf(stderr, "%s:%d: HYLA_CHECK failed: %s: %s\n", __FILE__, __LINE__, #cond, \
                   (msg));                                                                  \
      std::abort();                                                                         \
    }                                                                                       \
  } while (0)

#endif  // HYLA_RUNTIME_BASE_CHECK_H_
