#pragma once
// An invariant a fuzz target asserts: on failure it prints what broke and aborts, which
// libFuzzer reports as a crash and saves the input for (crash-<sha1> in the working dir).
#include <cstdio>
#include <cstdlib>

#define FUZZ_CHECK(cond)                                                              \
    do {                                                                              \
        if (!(cond)) {                                                                \
            std::fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, \
                         #cond);                                                      \
            std::abort();                                                             \
        }                                                                             \
    } while (0)
