#!/usr/bin/env bash
# Install WordNet 3.0 for NLTK's METEOR (the verify stage's translation gate) without internet
# access to nltk's downloader. Idempotent: a second run rewrites nothing (about 6 s, mostly the nltk check).
#
# What it does (docs/ENVIRONMENT notes, "Translation-gate metrics offline"):
#   1. As root, if missing: apt-get install -y --no-install-recommends wordnet-base wordnet-sense-index
#      (Debian's WordNet 3.0 database: /usr/share/wordnet/).
#   2. COPIES (never symlinks: nltk >= 3.10 refuses data files that resolve outside its data root)
#      data.{adj,adv,noun,verb}, index.{adj,adv,noun,verb}, {adj,adv,noun,verb}.exc, cntlist.rev
#      and index.sense into  $NLTK_DATA/corpora/wordnet/.
#   3. Writes `lexnames`, the 45-line table WordNet 3.0 fixes (lexnames(5WN)) that Debian does
#      not ship as a file: "NN<TAB>lexname<TAB>syntactic category (1 noun, 2 verb, 3 adj, 4 adv)".
#   4. Checks the table against the lexicographer-file numbers in the data files, then loads
#      nltk.corpus.wordnet and requires wordnet.synsets("dog")[0].lexname() == "noun.animal".
#
# NLTK_DATA defaults to /usr/local/share/nltk_data, one of nltk's built-in search paths, so no
# environment variable is needed afterwards. omw-1.4 is not needed for English METEOR.
#
# On a cluster without root:
#   - copy the 14 files above from any machine that has them (this one, after running the
#     script: /usr/local/share/nltk_data/corpora/wordnet/ already holds all 15 including
#     lexnames) to a directory of yours, e.g. $HOME/wordnet-src/, and run
#         WORDNET_SRC=$HOME/wordnet-src NLTK_DATA=$HOME/nltk_data bash scripts/install_wordnet.sh
#     (WORDNET_SRC: where the database files are; default /usr/share/wordnet), or simply copy the
#     whole corpora/wordnet/ directory to $HOME/nltk_data/corpora/wordnet/;
#   - then export NLTK_DATA=$HOME/nltk_data in the jobs (cluster.setup in the cluster profile),
#     unless the directory is one of nltk's defaults (~/nltk_data is one).
#
# Environment: NLTK_DATA (target root), WORDNET_SRC (source directory), PYTHON (interpreter used
# for the final check; default: the project's .venv, else python3).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
NLTK_ROOT=${NLTK_DATA:-/usr/local/share/nltk_data}
NLTK_ROOT=${NLTK_ROOT%%:*}            # NLTK_DATA may be a search path; install into its first entry
SRC=${WORDNET_SRC:-/usr/share/wordnet}
DEST="$NLTK_ROOT/corpora/wordnet"
START=$(date +%s.%N)

die() { echo "install_wordnet.sh: ERROR: $*" >&2; exit 1; }
say() { echo "install_wordnet.sh: $*"; }

FILES=(data.adj data.adv data.noun data.verb index.adj index.adv index.noun index.verb
       adj.exc adv.exc noun.exc verb.exc cntlist.rev index.sense)

missing_src() {
    local f out=()
    for f in "${FILES[@]}"; do [ -s "$SRC/$f" ] || out+=("$f"); done
    echo "${out[*]:-}"
}

# 1. The database files.
MISSING=$(missing_src)
if [ -n "$MISSING" ]; then
    if [ -n "${WORDNET_SRC:-}" ]; then
        die "WORDNET_SRC=$SRC lacks: $MISSING (copy them from a machine with Debian's wordnet-base and wordnet-sense-index)"
    fi
    if [ "$(id -u)" != 0 ]; then
        die "$SRC lacks: $MISSING and this is not root, so apt-get cannot install wordnet-base wordnet-sense-index.
  Without root: copy the files from another machine and run
  WORDNET_SRC=<dir with the files> NLTK_DATA=\$HOME/nltk_data bash scripts/install_wordnet.sh"
    fi
    command -v apt-get >/dev/null || die "no apt-get here; install WordNet 3.0's database files some other way and set WORDNET_SRC"
    say "apt-get install wordnet-base wordnet-sense-index"
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends wordnet-base wordnet-sense-index \
        >/tmp/install_wordnet.apt.log 2>&1 \
        || { tail -20 /tmp/install_wordnet.apt.log >&2; die "apt-get install failed (log above; try apt-get update first)"; }
    MISSING=$(missing_src)
    [ -z "$MISSING" ] || die "after apt-get install, $SRC still lacks: $MISSING"
fi

# 2. Copy (not link) into nltk's layout. Only files that differ are rewritten, atomically.
mkdir -p "$DEST" || die "cannot create $DEST (set NLTK_DATA to a directory you can write)"
COPIED=0
for f in "${FILES[@]}"; do
    if [ -L "$DEST/$f" ]; then rm -f "$DEST/$f"; fi   # an old symlink: nltk 3.10 refuses it
    if ! cmp -s "$SRC/$f" "$DEST/$f"; then
        cp "$SRC/$f" "$DEST/$f.tmp.$$" && mv -f "$DEST/$f.tmp.$$" "$DEST/$f" || die "cannot copy $SRC/$f to $DEST"
        COPIED=$((COPIED + 1))
    fi
done

# 3. lexnames (WordNet 3.0, lexnames(5WN)): number, name, syntactic category.
LEX=$(cat <<'EOF'
00 adj.all 3
01 adj.pert 3
02 adv.all 4
03 noun.Tops 1
04 noun.act 1
05 noun.animal 1
06 noun.artifact 1
07 noun.attribute 1
08 noun.body 1
09 noun.cognition 1
10 noun.communication 1
11 noun.event 1
12 noun.feeling 1
13 noun.food 1
14 noun.group 1
15 noun.location 1
16 noun.motive 1
17 noun.object 1
18 noun.person 1
19 noun.phenomenon 1
20 noun.plant 1
21 noun.possession 1
22 noun.process 1
23 noun.quantity 1
24 noun.relation 1
25 noun.shape 1
26 noun.state 1
27 noun.substance 1
28 noun.time 1
29 verb.body 2
30 verb.change 2
31 verb.cognition 2
32 verb.communication 2
33 verb.competition 2
34 verb.consumption 2
35 verb.contact 2
36 verb.creation 2
37 verb.emotion 2
38 verb.motion 2
39 verb.perception 2
40 verb.possession 2
41 verb.social 2
42 verb.stative 2
43 verb.weather 2
44 adj.ppl 3
EOF
)
LEX=$(printf '%s\n' "$LEX" | tr ' ' '\t')
[ "$(printf '%s\n' "$LEX" | wc -l)" = 45 ] || die "internal: lexnames table is not 45 lines"
if [ "$(cat "$DEST/lexnames" 2>/dev/null)" != "$LEX" ]; then
    printf '%s\n' "$LEX" >"$DEST/lexnames.tmp.$$" && mv -f "$DEST/lexnames.tmp.$$" "$DEST/lexnames" \
        || die "cannot write $DEST/lexnames"
    COPIED=$((COPIED + 1))
fi

# 4a. Every synset's lexicographer file number must name a file of its part of speech.
for pos in noun verb adj adv; do
    bad=$(awk -v pos="$pos" -v lexfile="$DEST/lexnames" '
        BEGIN { while ((getline line < lexfile) > 0) { split(line, a, "\t"); name[a[1] + 0] = a[2] } }
        /^  / { next }                                   # licence header
        { n = $2 + 0; split(name[n], p, "."); if (p[1] != pos) bad++ }
        END { print bad + 0 }' "$DEST/data.$pos")
    [ "$bad" = 0 ] || die "lexnames does not match data.$pos ($bad synsets point at a file of another part of speech)"
done
SYNSETS=$(cat "$DEST"/data.{noun,verb,adj,adv} | awk '/^  /{next}{n++}END{print n+0}')
[ "$SYNSETS" = 117659 ] || die "$DEST holds $SYNSETS synsets, WordNet 3.0 has 117659 (wrong or truncated files in $SRC?)"

# 4b. nltk itself.
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x "$HERE/.venv/bin/python" ]; then PY="$HERE/.venv/bin/python"; else PY=python3; fi
fi
if "$PY" -c "import nltk" 2>/dev/null; then
    NLTK_DATA="$NLTK_ROOT${NLTK_DATA:+:$NLTK_DATA}" OMP_NUM_THREADS=1 "$PY" - "$DEST" <<'EOF' || die "nltk could not use $DEST (message above)"
import os, sys, warnings
warnings.simplefilter("ignore")  # "multilingual functions are not available": omw is not needed
import nltk
from nltk.corpus import wordnet
found = os.path.realpath(nltk.data.find("corpora/wordnet"))
if found != os.path.realpath(sys.argv[1]):
    print(f"install_wordnet.sh: WARNING: nltk finds WordNet at {found}, earlier in its search path than {sys.argv[1]}")
lex = wordnet.synsets("dog")[0].lexname()
assert lex == "noun.animal", f"synsets('dog')[0].lexname() is {lex!r}, expected 'noun.animal'"
assert wordnet.synsets("run", pos="v")[0].lexname().startswith("verb."), "verb lexnames wrong"
from nltk.translate.meteor_score import meteor_score
m = meteor_score([["the", "cat", "sat", "on", "the", "mat"]], "the cat is sitting on the mat".split())
assert abs(m - 0.7934) < 5e-5, f"METEOR reference value {m:.4f} != 0.7934"
print(f"install_wordnet.sh: nltk {nltk.__version__} OK: dog -> {lex}, METEOR check {m:.4f}")
EOF
else
    say "WARNING: $PY cannot import nltk; only the file checks ran (set PYTHON= to check with nltk)"
fi

say "WordNet 3.0 ($SYNSETS synsets) in $DEST ($COPIED file(s) written) in $(awk -v s="$START" -v e="$(date +%s.%N)" 'BEGIN{printf "%.1f", e-s}')s"
if [ "$NLTK_ROOT" != /usr/local/share/nltk_data ] && [ "$NLTK_ROOT" != "$HOME/nltk_data" ]; then
    say "jobs must run with NLTK_DATA=$NLTK_ROOT (not one of nltk's default paths)"
fi
