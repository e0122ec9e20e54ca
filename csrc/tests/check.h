// A minimal check macro for the C++ unit tests (ctest reads the exit status).
#pragma once

#include <cmath>
#include <cstdio>
#include <cstdlib>

inline int g_failures = 0;

#define EXPECT_NEAR(a, b, tol)                                                                        \
  do {                                                                                               \
    const double a_ = (a), b_ = (b);                                                                 \
    if (!(std::fabs(a_ - b_) <= (tol))) {                                                            \
      std::fprintf(stderr, "%s:%d: %s = %.9g, expected %s = %.9g (tol %g)\n", __FILE__, __LINE__, #a, \
                   a_, #b, b_, static_cast<double>(tol));                                            \
      ++g_failures;                                                                                  \
    }                                                                                                \
  } while (0)

#define EXPECT_TRUE(cond)                                                         \
  do {                                                                      \
    if (!(cond)) {                                                          \
      std::fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                         \
    }                                                                       \
  } while (0)

inline int finish(const char* name) {
  if (g_failures) {
    std::fprintf(stderr, "%s: %d check(s) failed\n", name, g_failures);
    return 1;
  }
  std::printf("%s: all checks passed\n", name);
  return 0;
}
