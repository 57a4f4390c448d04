/* What every native module includes first: the compile-time debug flag. */
#ifndef COORDCORE_CC_COMMON_H
#define COORDCORE_CC_COMMON_H

/* setup.py defines CC_DEBUG (1 under COORDCORE_DEBUG=1); a build without it is a
   release build. Invariant checks are `if CC_DEBUG:` so release folds them away. */
#ifndef CC_DEBUG
#define CC_DEBUG 0
#endif

#endif
