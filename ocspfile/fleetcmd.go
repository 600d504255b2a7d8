package ocspfile

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"path"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caddyserver/caddy/v2"
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/caddyserver/certmagic"
	"github.com/spf13/cobra"
	"golang.org/x/crypto/ocsp"

	"github.com/dnsfront/dnsfront/ocspfile/staple"
)

// statusCommand is `caddy ocsp status`: the staples kept in the storage a
// config names (a fleet's shared storage), read without a running server.
func statusCommand() *cobra.Command {
	c := &cobra.Command{
		Use:   "status [--config <file>] [--adapter <name>] [--json]",
		Short: "Prints the staples kept in the config's storage (shared by a fleet): who made each, and when it expires",
		Long: `
Reads the storage that the config names (its top-level "storage", or
Caddy's default file system storage) and prints every OCSP staple the ocsp
app keeps there: the certificate, the response's status, thisUpdate and
nextUpdate, and which instance made it and when. It needs no running
server: it reads what every instance of a fleet reads.

A staple is printed as stored; the instances validate it against its
certificate before serving it (GET /ocsp/ on each shows what it serves).`,
		Args: cobra.NoArgs,
	}
	f := c.Flags()
	config := f.String("config", "", "configuration file whose storage to read (default: Caddy's default storage)")
	adapter := f.String("adapter", "", "name of the config adapter of --config")
	asJSON := f.Bool("json", false, "print JSON instead of a table")
	c.RunE = func(cmd *cobra.Command, _ []string) error {
		ctx, cancel := caddy.NewContext(caddy.Context{Context: context.Background()})
		defer cancel()
		stor, where, err := configStorage(ctx, *config, *adapter)
		if err != nil {
			return err
		}
		list, err := storedStaples(ctx, stor)
		if err != nil {
			return fmt.Errorf("reading %s: %w", where, err)
		}
		w := cmd.OutOrStdout()
		if *asJSON {
			enc := json.NewEncoder(w)
			enc.SetIndent("", "  ")
			return enc.Encode(list)
		}
		printStored(w, where, list, time.Now())
		return nil
	}
	return c
}

// configStorage loads the storage module the config names (as `caddy
// storage export` does), or Caddy's default storage.
func configStorage(ctx caddy.Context, config, adapter string) (certmagic.Storage, string, error) {
	if config == "" {
		return caddy.DefaultStorage, "storage " + caddy.DefaultStorage.Path, nil
	}
	cfg, _, _, err := caddycmd.LoadConfig(config, adapter)
	if err != nil {
		return nil, "", err
	}
	var sv struct {
		StorageRaw json.RawMessage `json:"storage,omitempty" caddy:"namespace=caddy.storage inline_key=module"`
	}
	if err := json.Unmarshal(cfg, &sv); err != nil {
		return nil, "", fmt.Errorf("%s: %w", config, err)
	}
	if sv.StorageRaw == nil {
		return configStorage(ctx, "", "")
	}
	mod, err := ctx.LoadModule(&sv, "StorageRaw")
	if err != nil {
		return nil, "", fmt.Errorf("%s: storage: %w", config, err)
	}
	stor, err := mod.(caddy.StorageConverter).CertMagicStorage()
	if err != nil {
		return nil, "", fmt.Errorf("%s: storage: %w", config, err)
	}
	where := "the storage of " + config
	if fs, ok := stor.(*certmagic.FileStorage); ok {
		where = "storage " + fs.Path
	}
	return stor, where, nil
}

// StoredStaple is one staple in storage, as `caddy ocsp status` prints it.
type StoredStaple struct {
	Key         string     `json:"key"`
	Certificate string     `json:"certificate,omitempty"`
	Subjects    []string   `json:"subjects,omitempty"`
	Serial      string     `json:"serial,omitempty"`
	Status      string     `json:"status"`
	ThisUpdate  *time.Time `json:"this_update,omitempty"`
	NextUpdate  *time.Time `json:"next_update,omitempty"`
	Source      string     `json:"source,omitempty"`
	Instance    string     `json:"instance_id,omitempty"`
	Host        string     `json:"host,omitempty"`
	MadeAt      *time.Time `json:"made_at,omitempty"`
	Error       string     `json:"error,omitempty"`
}

// storedStaples reads every staple the app keeps in stor, by certificate.
func storedStaples(ctx context.Context, stor certmagic.Storage) ([]StoredStaple, error) {
	keys, err := stor.List(ctx, storagePrefix, false)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, nil
		}
		return nil, err
	}
	slices.Sort(keys)
	var out []StoredStaple
	for _, k := range keys {
		if path.Ext(k) != ".der" {
			continue
		}
		s := StoredStaple{Key: k, Status: "unreadable"}
		der, err := stor.Load(ctx, k)
		if err != nil {
			s.Error = err.Error()
			out = append(out, s)
			continue
		}
		if b, err := stor.Load(ctx, strings.TrimSuffix(k, ".der")+".json"); err == nil {
			var rec stapleRecord
			if json.Unmarshal(b, &rec) == nil && rec.describes(der) {
				s.Certificate, s.Subjects, s.Serial, s.Source = rec.Certificate, rec.Subjects, rec.Serial, rec.Source
				s.Instance, s.Host = rec.Instance, rec.Host
				t := rec.MadeAt.UTC()
				s.MadeAt = &t
			}
		}
		r, err := parseAny(der)
		if err != nil {
			s.Error = err.Error()
			out = append(out, s)
			continue
		}
		s.Status = map[int]string{ocsp.Good: "good", ocsp.Revoked: "revoked", ocsp.Unknown: "unknown"}[r.Status]
		if s.Serial == "" {
			s.Serial = staple.FormatSerial(r.SerialNumber)
		}
		tu := r.ThisUpdate.UTC()
		s.ThisUpdate = &tu
		if !r.NextUpdate.IsZero() {
			nu := r.NextUpdate.UTC()
			s.NextUpdate = &nu
		}
		out = append(out, s)
	}
	return out, nil
}

// parseAny parses a stored response for its first certificate status,
// without checking its signature (the CLI has no certificate to check it
// against; the instances do before serving it).
func parseAny(der []byte) (*ocsp.Response, error) {
	ids, err := staple.CertIDs(der)
	if err != nil {
		return nil, err
	}
	if len(ids) == 0 {
		return nil, fmt.Errorf("%w: no certificate status", staple.ErrMalformed)
	}
	return ocsp.ParseResponseForCert(der, &x509.Certificate{SerialNumber: ids[0].SerialNumber}, nil)
}

func printStored(w io.Writer, where string, list []StoredStaple, now time.Time) {
	fmt.Fprintf(w, "%d staple(s) in %s\n", len(list), where)
	if len(list) == 0 {
		return
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "CERTIFICATE\tSERIAL\tSTATUS\tNEXT UPDATE\tEXPIRES\tMADE BY\tMADE AT")
	for _, s := range list {
		name := s.Certificate
		if len(s.Subjects) > 0 {
			name = strings.Join(s.Subjects, ",")
		}
		if name == "" {
			name = "(no record) " + path.Base(s.Key)
		}
		next, expires := "-", "-"
		if s.NextUpdate != nil {
			next, expires = staple.FormatTime(*s.NextUpdate), untilText(*s.NextUpdate)
		}
		status := s.Status
		if s.Error != "" {
			status += ": " + s.Error
		}
		by, at := "-", "-"
		if s.MadeAt != nil {
			by, at = s.Host+" "+s.Instance, staple.FormatTime(*s.MadeAt)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", name, s.Serial, status, next, expires, by, at)
	}
	tw.Flush()
}
