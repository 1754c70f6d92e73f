#!/bin/sh
# An exec rotation hook for the tests. It is copied into a directory of
# its own, where it keeps what it did: steps.log (a line per step: the
# step, the rotation id, whether a value came), <step>.json (the last
# request of each step) and <rotation id>.value (the credential it made,
# base64, so that create called again for a rotation returns the same).
# The policy parameter mode makes it misbehave: garbage, fail, hang, big,
# toobig, fail-test (the test step fails).
set -u
step="$1"
dir=$(dirname "$0")
req=$(cat)
field() { printf '%s' "$req" | sed -n "s/.*\"$1\":\"\([^\"]*\)\".*/\1/p"; }
rid=$(field rotation_id)
mode=$(field mode)
value=$(field value)
printf '%s' "$req" > "$dir/$step.json"
has=no
[ -n "$value" ] && has=yes
echo "$step $rid value=$has" >> "$dir/steps.log"

case "$mode" in
garbage) echo "canary-garbage-output: not JSON"; exit 0 ;;
fail) echo "canary-stderr-text" >&2; exit 3 ;;
hang) sleep 60 & echo $! > "$dir/sleep.pid"; wait; exit 0 ;;
big) head -c 2000000 /dev/zero | tr '\0' 'c'; exit 0 ;;
toobig)
	if [ "$step" = create ]; then
		printf '{"value":"%s"}' "$(head -c 600000 /dev/zero | tr '\0' 'c' | base64 | tr -d '\n')"
		exit 0
	fi ;;
fail-test)
	if [ "$step" = test ]; then
		echo "canary-stderr-text: the new credential does not work" >&2
		exit 4
	fi ;;
esac

case "$step" in
create)
	if [ ! -s "$dir/$rid.value" ]; then
		printf 'canary-%s' "$(od -An -tx1 -N16 /dev/urandom | tr -d ' \n')" | base64 | tr -d '\n' > "$dir/$rid.value"
	fi
	printf '{"value":"%s"}\n' "$(cat "$dir/$rid.value")" ;;
set | test)
	if [ "$value" != "$(cat "$dir/$rid.value" 2>/dev/null)" ]; then
		echo "not the value made for $rid" >&2
		exit 5
	fi ;;
finish) ;;
*) echo "unknown step" >&2; exit 2 ;;
esac
