#!/bin/sh
# Regenerates the default voicemail prompts (8 kHz mono G.711 µ-law WAV files) in this folder.
#
# Speech: espeak-ng (Debian package `espeak-ng`, GPL-3.0-or-later; https://github.com/espeak-ng/espeak-ng),
# voice en-us, speed 150. Resampling and encoding: sox (Debian package `sox`, GPL-2.0-or-later).
# The audio these programs produce is not covered by their licences: the prompts are part of
# podpbx (MIT) like the rest of the repository.
#
#   apt-get install espeak-ng sox && sh crates/voicemail/prompts/generate.sh
#
# The names are the file names `src/prompts.rs` embeds; keep both lists in step.
set -eu
cd "$(dirname "$0")"
VOICE=${VOICE:-en-us}
say() {
    name=$1
    shift
    espeak-ng -v "$VOICE" -s 150 -w "/tmp/podpbx-prompt-$$.wav" "$*"
    # 8 kHz mono µ-law; trim leading/trailing silence, then 100 ms of silence at the end.
    sox "/tmp/podpbx-prompt-$$.wav" -r 8000 -c 1 -e u-law -b 8 "$name.wav" \
        silence 1 0.02 0.5% reverse silence 1 0.02 0.5% reverse pad 0 0.1
    rm -f "/tmp/podpbx-prompt-$$.wav"
}
say greeting "The person you are calling is not available. Please leave a message after the tone. When you are done, hang up or press the pound key."
say saved "Your message has been saved. Goodbye."
say goodbye "Goodbye."
say mailbox-full "The mailbox is full, a message cannot be left. Goodbye."
say enter-pin "Please enter your PIN, followed by the pound key."
say wrong-pin "That PIN is not correct."
say you-have "You have"
say new-message "new message"
say new-messages "new messages"
say old-message "old message"
say old-messages "old messages"
say and "and"
say no-messages "no messages"
say main-menu "Press 1 to listen to new messages, 2 for old messages, or pound to hang up."
say message "Message"
say message-menu "Press 5 to replay, 6 for the next message, 7 to delete, or star for the main menu."
say deleted "Message deleted."
say no-more "There are no more messages."
say invalid "That is not a valid choice."
say activated "Activated."
say deactivated "Deactivated."
say not-allowed "This is not allowed."
for n in 0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 30 40 50 60 70 80 90; do
    say "n$n" "$n"
done
