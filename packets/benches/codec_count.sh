#!/usr/bin/env bash
# Instructions per packet, ours against rumqttc, for every codec case (or the cases given as
# arguments), counted by callgrind over the `measured_*` functions of codec_count.rs only.
# Each figure is (count for 2,000 packets - count for 1,000 packets) / 1,000.
#
#   packets/benches/codec_count.sh                      # every case
#   packets/benches/codec_count.sh publish_16B publish_1KiB
#
# Needs valgrind. Builds the bench first (release profile, in $CARGO_TARGET_DIR or target/).
set -euo pipefail
cd "$(dirname "$0")/../.."
cargo bench -q -p paho-packets --bench codec_count --no-run 2>/dev/null
dir=${CARGO_TARGET_DIR:-target}
bin=$(ls -t "$dir"/release/deps/codec_count-* | grep -v '\.d$' | head -1)
cases=("$@")
if [ ${#cases[@]} -eq 0 ]; then
    cases=(publish_16B publish_16B_props publish_1KiB publish_1KiB_props publish_64KiB
        publish_64KiB_props connect_props subscribe_5_filters)
fi
count() { # op case codec n
    valgrind --tool=callgrind --callgrind-out-file=/dev/null --toggle-collect='*measured_*' \
        "$bin" "$1" "$2" "$3" "$4" 2>&1 | awk '/Collected/ {print $4}'
}
per_packet() {
    local a b
    a=$(count "$1" "$2" "$3" 1000)
    b=$(count "$1" "$2" "$3" 2000)
    echo $(((b - a) / 1000))
}
echo "| op | case | paho instr/pkt | rumqttc instr/pkt | ratio (rumqttc / paho) |"
echo "|---|---|---:|---:|---:|"
for c in "${cases[@]}"; do
    for op in encode decode; do
        p=$(per_packet "$op" "$c" paho)
        r=$(per_packet "$op" "$c" rumqttc)
        echo "| $op | $c | $p | $r | $(awk "BEGIN {printf \"%.2f\", $r / $p}") |"
    done
done
