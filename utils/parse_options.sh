#!/usr/bin/env bash
# Kaldi-style option parsing, sourced by a script after it sets its defaults:
#   --name value  or  --name=value   sets the shell variable "name" (dashes become underscores).
# Only variables the script already defined may be set, so a misspelt option is an error, not a no-op.
# `--help` prints the options with their current values.

while [ "$#" -gt 0 ]; do
  case "$1" in
    --help|-h)
      echo "Usage: $0 [options]"
      echo "Options (current values):"
      for __v in ${__option_names:-}; do echo "  --${__v} ${!__v}"; done
      exit 0 ;;
    --*=*)
      __name="${1%%=*}"; __value="${1#*=}"; shift ;;
    --*)
      __name="$1"
      if [ "$#" -lt 2 ]; then echo "$0: option $1 needs a value" >&2; exit 1; fi
      __value="$2"; shift 2 ;;
    *)
      break ;;
  esac
  __name="${__name#--}"; __name="${__name//-/_}"
  if ! [[ "$__name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || [ -z "${!__name+set}" ]; then
    echo "$0: unknown option --${__name}; known options: ${__option_names:-(none)}" >&2
    exit 1
  fi
  printf -v "$__name" '%s' "$__value"
done
unset __name __value __v
