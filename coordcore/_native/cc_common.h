/* What every native module and helper header includes first. */
#ifndef COORDCORE_CC_COMMON_H
#define COORDCORE_CC_COMMON_H

/* setup.py defines CC_DEBUG (1 under COORDCORE_DEBUG=1); a build without it is a
   release build. Invariant checks are `if CC_DEBUG:` so release folds them away. */
#ifndef CC_DEBUG
#define CC_DEBUG 0
#endif

/* For the non-inline functions of the helper headers: every module that cimports
   cc.pxd includes them and most use only some, which -Wall would report. */
#if defined(__GNUC__)
#define CC_UNUSED __attribute__((unused))
#else
#define CC_UNUSED
#endif

#endif
