/* replay_main.c : main() for a fuzz target built without libFuzzer.
 *
 *   replay_<target> DIR_OR_FILE...
 *
 * Feeds every regular file (directories: every file in them, in name
 * order) to LLVMFuzzerTestOneInput() once, in this process, so a corpus is
 * a plain regression test under ASan/UBSan/LeakSanitizer or valgrind.
 * Prints one line per input set and exits 0; a crash is the failure.
 * Exits 77 (meson: skipped) if a corpus directory is missing or empty. */
#include "fuzz_util.h"

#include <dirent.h>

__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);

static size_t run_file(const char *path)
{
    FILE *f = fopen(path, "rb");
    if (!f) {
        perror(path);
        exit(1);
    }
    size_t cap = 1 << 16, n = 0;
    uint8_t *buf = malloc(cap);
    for (;;) {
        if (n == cap) {
            cap *= 2;
            buf = realloc(buf, cap);
        }
        if (!buf) {
            fprintf(stderr, "replay: out of memory\n");
            exit(1);
        }
        size_t r = fread(buf + n, 1, cap - n, f);
        if (r == 0)
            break;
        n += r;
    }
    fclose(f);
    /* an exact-size copy, so ASan sees any overrun by one byte */
    uint8_t *exact = malloc(n ? n : 1);
    memcpy(exact, buf, n);
    free(buf);
    LLVMFuzzerTestOneInput(exact, n);
    free(exact);
    return 1;
}

static int by_name(const struct dirent **a, const struct dirent **b)
{
    return strcmp((*a)->d_name, (*b)->d_name);
}

int main(int argc, char **argv)
{
    if (LLVMFuzzerInitialize)
        LLVMFuzzerInitialize(&argc, &argv);
    size_t total = 0;
    for (int i = 1; i < argc; i++) {
        struct stat sb;
        if (stat(argv[i], &sb) != 0) {
            printf("replay: %s: missing (skipped)\n", argv[i]);
            return 77;
        }
        if (!S_ISDIR(sb.st_mode)) {
            total += run_file(argv[i]);
            continue;
        }
        struct dirent **ents;
        int n = scandir(argv[i], &ents, NULL, by_name);
        if (n < 0) {
            perror(argv[i]);
            return 1;
        }
        size_t here = 0;
        for (int k = 0; k < n; k++) {
            char p[4096];
            snprintf(p, sizeof p, "%s/%s", argv[i], ents[k]->d_name);
            if (stat(p, &sb) == 0 && S_ISREG(sb.st_mode))
                here += run_file(p);
            free(ents[k]);
        }
        free(ents);
        printf("replay: %s: %zu inputs\n", argv[i], here);
        total += here;
    }
    if (total == 0) {
        printf("replay: no inputs (skipped)\n");
        return 77;
    }
    printf("replay: %zu inputs, no crash\n", total);
    return 0;
}
